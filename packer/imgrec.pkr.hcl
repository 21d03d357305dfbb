# The imgrec AMI: the three release binaries, ONNX Runtime, one model and the systemd units. The
# instance's role (web tier + scaler, or app tier) and its configuration come from user data
# (terraform/templates/user-data.sh.tftpl), so one image serves both tiers.

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the AMI is built in (the Terraform region)."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Instance type of the temporary build instance."
}

variable "stage_dir" {
  type        = string
  default     = "target/packer-stage"
  description = "Folder made by `make deploy`: bin/, lib/, model/, systemd/ and smoke.jpg."
}

variable "model" {
  type        = string
  default     = "resnet18"
  description = "Name of the model in stage_dir/model/, recorded in the AMI's tags."
}

locals {
  build_id = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "imgrec" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "imgrec-${local.build_id}"
  ssh_username  = "ubuntu"
  encrypt_boot  = true
  # SSH to the build instance from this machine's public address only (not 0.0.0.0/0), and
  # Packer's temporary key removed from authorized_keys before the image is taken.
  temporary_security_group_source_public_ip = true
  ssh_clear_authorized_keys                 = true
  # IMDSv2 only, on the build instance and by default on instances of the AMI. (Packer 1.6's
  # built-in builder predates both settings: make test validates the template without them.)
  imds_support = "v2.0"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["099720109477"] # Canonical
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 16
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name    = "imgrec-${local.build_id}"
    Project = "imgrec"
    Model   = var.model
  }
}

build {
  sources = ["source.amazon-ebs.imgrec"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/imgrec"]
  }

  provisioner "file" {
    source      = "${var.stage_dir}/"
    destination = "/tmp/imgrec"
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/install.sh"
    execute_command = "chmod +x {{ .Path }}; sudo {{ .Path }}"
  }

  post-processor "manifest" {
    output     = "${var.stage_dir}/../packer-manifest.json"
    strip_path = true
  }
}
