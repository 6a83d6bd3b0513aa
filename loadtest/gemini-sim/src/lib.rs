//! kubesent-gemini-sim
