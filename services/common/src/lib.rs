//! kubesent-common
