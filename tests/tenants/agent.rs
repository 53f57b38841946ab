//! The rotation agent against pod-controlled content: FIFOs and links planted in a writable
//! volume, policy changes while it runs, bounded state, log and memory, read-only volumes.
