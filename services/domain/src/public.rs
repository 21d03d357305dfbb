//! What a public endpoint may say about an internal failure: its gist, without what only an
//! operator should see (account ids and role ARNs in AWS messages, file paths and endpoints in
//! local ones). The full message goes to the logs.

/// The first line of `message`, at most `MAX_CHARS` characters, with ARNs, 12-digit account ids,
/// absolute paths and URLs replaced by placeholders.
pub fn redact(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let words: Vec<String> = line.split(' ').map(redact_word).collect();
    let out = words.join(" ");
    match out.char_indices().nth(MAX_CHARS) {
        Some((at, _)) => format!("{}...", &out[..at]),
        None => out,
    }
}

pub const MAX_CHARS: usize = 200;

fn redact_word(word: &str) -> String {
    // Keep the punctuation around a token: `"arn:aws:...",` -> `"<arn>",`.
    let start = word
        .find(|c: char| c.is_alphanumeric() || c == '/' || c == '~')
        .unwrap_or(word.len());
    let end = word
        .rfind(|c: char| c.is_alphanumeric() || c == '/')
        .map_or(start, |i| i + 1)
        .max(start);
    let (before, token, after) = (&word[..start], &word[start..end], &word[end..]);
    let replaced = if token.contains("arn:") {
        "<arn>".to_owned()
    } else if token.contains("://") {
        "<endpoint>".to_owned()
    } else if (token.starts_with('/') || token.starts_with("~/")) && token.len() > 1 {
        "<path>".to_owned()
    } else {
        mask_account_ids(token)
    };
    format!("{before}{replaced}{after}")
}

/// Runs of exactly 12 digits (AWS account ids) -> `<account>`.
fn mask_account_ids(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() == 12 {
            out.push_str("<account>");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in token.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_messages_lose_their_arns_and_account_ids() {
        let aws = "AccessDenied: User: arn:aws:sts::123456789012:assumed-role/imgrec-web/i-0abc is not \
                   authorized to perform: autoscaling:SetDesiredCapacity on resource: \
                   \"arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:uuid:autoScalingGroupName/app\", account 123456789012.";
        let public = redact(aws);
        assert!(!public.contains("123456789012") && !public.contains("arn:"), "{public}");
        assert!(
            public.starts_with("AccessDenied: User: <arn> is not authorized"),
            "{public}"
        );
        assert!(public.contains("resource: \"<arn>\""), "{public}");
        assert!(public.contains("account <account>."), "{public}");
    }

    #[test]
    fn local_messages_lose_their_paths_and_endpoints() {
        let local = "cannot start /home/me/imgrec/target/release/app-tier: No such file (os error 2)\nCaused by: ...";
        assert_eq!(redact(local), "cannot start <path>: No such file (os error 2)");
        assert_eq!(
            redact("dispatch failure: http://127.0.0.1:5000/ refused"),
            "dispatch failure: <endpoint> refused"
        );
        assert_eq!(redact("queue ~/data/queue.sqlite3 locked"), "queue <path> locked");
    }

    #[test]
    fn plain_messages_pass_unchanged_and_long_ones_are_cut() {
        let plain = "Auto Scaling group \"app-tier\" does not exist (1 of 20 instances, 3/4 ok)";
        assert_eq!(redact(plain), plain);
        let long = "x ".repeat(500);
        assert!(redact(&long).chars().count() <= MAX_CHARS + 3);
        assert_eq!(
            redact("request 1234567890123 took 12 s"),
            "request 1234567890123 took 12 s"
        );
    }
}
