# Current Packer (1.7+) installs the Amazon plugin from this block (`packer init packer/`). It is
# kept apart from the build template so that Packer 1.6, which has the builder built in and
# rejects this block, can validate the template offline (make test).
packer {
  required_version = ">= 1.7.0"

  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
