//! The classifier end to end on the default model (built by `make model`).

use std::path::PathBuf;

use imgrec_classifier::runtime::library_path;
use imgrec_classifier::{Classifier, ClassifyError, ImageError, ImageLimits, InferenceSettings};

const JPEG: &[u8] = include_bytes!("fixtures/small.jpg");
const PNG: &[u8] = include_bytes!("fixtures/small.png");

fn settings() -> InferenceSettings {
    let model_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/efficientnet-lite0"));
    assert!(
        model_dir.join("model.onnx").exists(),
        "{} missing: run `make model`",
        model_dir.display()
    );
    InferenceSettings {
        model_dir,
        threads: 1,
        onnxruntime_lib: None,
    }
}

#[test]
fn a_bad_image_fails_alone_in_its_batch() {
    let mut classifier = Classifier::load(&settings(), ImageLimits::default()).unwrap();
    let results = classifier.classify(&[JPEG, b"not an image", PNG, b""]);
    assert_eq!(results.len(), 4);
    let jpeg = results[0].as_ref().unwrap();
    let png = results[2].as_ref().unwrap();
    assert!(matches!(
        results[1],
        Err(ClassifyError::Image(ImageError::UnsupportedFormat(_)))
    ));
    assert!(matches!(results[3], Err(ClassifyError::Image(ImageError::Empty))));
    assert!((0.0..=1.0).contains(&jpeg.probability) && jpeg.probability > 0.0);
    assert_eq!(classifier.labels()[jpeg.index], jpeg.label);
    assert_eq!(classifier.labels().len(), 1000);
    // The same picture in two encodings is close enough that the top-1 agrees.
    assert_eq!(jpeg.label, png.label);
}

#[test]
fn batched_and_single_runs_agree() {
    let mut classifier = Classifier::load(&settings(), ImageLimits::default()).unwrap();
    let batch = classifier.classify(&[JPEG, PNG, JPEG]);
    let single: Vec<_> = [JPEG, PNG, JPEG]
        .iter()
        .map(|img| classifier.classify(&[img]).remove(0).unwrap())
        .collect();
    for (b, s) in batch.into_iter().zip(single) {
        let b = b.unwrap();
        assert_eq!(b.index, s.index);
        assert!((b.probability - s.probability).abs() < 1e-5);
    }
}

#[test]
fn missing_model_is_a_clear_error() {
    let mut s = settings();
    s.model_dir = PathBuf::from("/nonexistent/model");
    let err = Classifier::load(&s, ImageLimits::default())
        .err()
        .expect("load must fail");
    assert!(
        format!("{err:#}").contains("/nonexistent/model/manifest.json"),
        "{err:#}"
    );
}

#[test]
fn missing_onnxruntime_library_is_a_clear_error() {
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        return; // the environment variable wins over the configured path, by design
    }
    let err = library_path(Some(std::path::Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"), "{err}");
}
