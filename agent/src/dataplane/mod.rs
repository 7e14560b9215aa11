//! The switch dataplane: tenant intents ([`intent`]) rendered into the kernel
//! objects the agent owns and diffed against what the kernel has
//! ([`desired`]), and the kernel's mode ([`mode`]). The reconciler that reads
//! and writes the kernel through rtnetlink builds on these.

pub mod desired;
pub mod inputs;
pub mod intent;
pub mod kernel;
pub mod mode;
pub mod networks;
pub mod reconcile;

pub use desired::{KernelMode, Object, Plan, diff, render};
pub use intent::{Guardrails, Intents, KernelFacts, VrfIntent, validate};
