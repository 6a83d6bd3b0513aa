//! kubesent-detector
