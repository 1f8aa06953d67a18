//! Logging (tracing) and progress bars (indicatif via tracing-indicatif).

use super::GlobalOpts;

pub fn init(_g: &GlobalOpts) {}
