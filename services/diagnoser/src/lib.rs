//! kubesent-diagnoser
