//! The Kubernetes gateway: a `sluice-http` flavor that understands the
//! Kubernetes API.
//!
//! - [`path`]: API paths and methods → verb, group/version, resource,
//!   subresource, namespace and name (pure, never panics).
//! - [`policy`]: the `kube = { verbs, resources, namespaces, names }` match key.
//! - [`mask`]: Secret values masked in JSON, YAML, Table and watch responses.
//! - [`status`]: denials as a Kubernetes `Status` object.

pub mod path;
pub mod policy;
