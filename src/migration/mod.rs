//! The aws-calico -> Tigera Operator migration: the plan builder (inventory +
//! profile -> plan), the preflight rules with the converter prediction, the steps
//! (one file each under `steps/`, leaves) and the parts they share.

pub mod calico_manifest;
pub mod capture;
pub mod converter;
pub mod crds;
pub mod descriptor;
pub mod facts;
#[cfg(test)]
mod layering;
pub mod leader_lock;
pub mod manifest;
pub mod nodes;
pub mod operator;
pub mod operator_manifest;
pub mod permissions;
pub mod plan;
pub mod policies;
pub mod pre_operator;
pub mod profile;
pub mod refs;
pub mod release;
pub mod render;
pub mod rollout;
pub mod round_sample;
pub mod rules;
pub mod session;
pub mod settled;
pub mod steps;
pub mod swap;
pub mod tolerations;
pub mod wait;
pub mod way_back;
pub mod world;
