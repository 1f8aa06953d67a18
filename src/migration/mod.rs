//! The aws-calico -> Tigera Operator migration: the plan builder (inventory +
//! profile -> plan), the preflight rules with the converter prediction, and the
//! steps, one file each under `steps/`.

pub mod converter;
pub mod facts;
pub mod manifest;
pub mod permissions;
pub mod plan;
pub mod profile;
pub mod render;
pub mod rollout;
pub mod rules;
pub mod session;
pub mod steps;
pub mod world;
