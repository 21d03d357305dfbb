//! Today's messages, as this release writes them (`fixtures/messages/`): every later release must
//! read them, and this release must still write exactly them, so that a change of format is a
//! decision (a new field is optional and ignored by older readers; anything else is a new version)
//! and never an accident of a rolling upgrade.

use std::path::Path;

use imgrec_domain::messages::{ClassifyRequest, ClassifyResponse, Message, Outcome, VERSION};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes a fixture and checks that encoding it again gives the same JSON.
fn read<M: Message + std::fmt::Debug>(name: &str) -> M {
    let bytes = fixture(name);
    let message = M::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again: serde_json::Value = serde_json::from_slice(&message.encode()).unwrap();
    let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(again, original, "{name}: this release writes it differently");
    message
}

#[test]
fn todays_requests_are_read_and_written_unchanged() {
    assert_eq!(
        VERSION, 1,
        "a new version: keep reading version 1's fixtures, add new ones"
    );
    let r: ClassifyRequest = read("request-v1.json");
    assert_eq!(
        (r.key.as_str(), r.reply_to.as_deref()),
        ("test_0.JPEG", Some("responses-web-instance2"))
    );
    assert!(r.object_version.is_some());
    let r: ClassifyRequest = read("request-v1-requeued.json");
    assert_eq!(r.requeued, 2);
    let r: ClassifyRequest = read("request-v1-no-reply-to.json");
    assert_eq!((r.requeued, r.reply_to), (0, None));
    let r: ClassifyRequest = read("request-v1-given-back.json");
    assert_eq!((r.given_back, r.requeued), (2, 0));
}

#[test]
fn todays_responses_are_read_and_written_unchanged() {
    let r: ClassifyResponse = read("response-v1-label.json");
    assert!(matches!(r.outcome, Outcome::Label { ref label, .. } if label == "bathtub"));
    let r: ClassifyResponse = read("response-v1-label-top.json");
    assert_eq!(r.timings.map(|t| (t.queue_wait_ms, t.batch_size)), Some((1250, 8)));
    let Outcome::Label { top, model, .. } = r.outcome else {
        panic!("not a label")
    };
    assert_eq!(
        top.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(),
        ["bathtub", "tub"]
    );
    assert_eq!(model.map(|m| m.version).as_deref(), Some("0123456789ab"));
    let r: ClassifyResponse = read("response-v1-rejected.json");
    assert!(matches!(r.outcome, Outcome::Rejected { .. }));
    let r: ClassifyResponse = read("response-v1-dead-lettered.json");
    assert!(matches!(r.outcome, Outcome::DeadLettered { receives: 3 }));
}
