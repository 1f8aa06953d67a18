//! The Kubernetes API server of the sandbox: the object store and the REST
//! API in front of it. Controllers, the data plane and the scenario are
//! clients of it; `Sandbox` (one level up) starts and serves it.
//!
//! - [`store`]: objects, resourceVersions, the change feed and the registry's
//!   semantics (create, update, patch, delete, watch);
//! - [`types`]: the served resource types, built in or from CRDs;
//! - [`versions`]: the Kubernetes minor served and which API versions it serves;
//! - [`convert`]: conversion between the served versions of a built-in kind;
//! - [`error`]: `Status` errors as the real server words them;
//! - [`faults`]: latency, errors, dropped watches and conflicts on demand;
//! - [`http`]: the REST routes (axum) and content negotiation;
//! - [`authz`], [`authz_http`]: RBAC evaluation, impersonation and access reviews;
//! - [`protobuf`]: the protobuf request bodies client-go's typed clients send;
//! - [`patch`]: merge, JSON and strategic merge patch;
//! - [`ssa`]: server-side apply and managedFields;
//! - [`select`]: label and field selectors;
//! - [`table`]: the `Table` rendering kubectl asks for;
//! - [`discovery`], [`openapi`]: what kubectl learns about the served types.

pub mod authz;
pub mod authz_http;
pub mod convert;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod http;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod requests;
pub mod select;
pub mod ssa;
pub mod store;
pub mod table;
pub mod types;
pub mod versions;
