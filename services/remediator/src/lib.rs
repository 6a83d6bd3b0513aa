//! kubesent-remediator
