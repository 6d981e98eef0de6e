//! The Kubernetes gateway: a `sluice-http` flavor that understands the
//! Kubernetes API.
//!
//! - [`path`]: API paths and methods → verb, group/version, resource,
//!   subresource, namespace and name (pure, never panics).
//! - [`policy`]: the `kube = { verbs, resources, namespaces, names }` match key.
//! - [`ephemeral`]: writes to `pods/NAME/ephemeralcontainers` (`kubectl debug`)
//!   judged as an exec of the command each new container runs.
//! - [`kubelet`]: proxy subresources judged on the inner request (kubelet
//!   exec/run/attach/portForward/containerLogs), or refused.
//! - [`mask`]: Secret values masked in JSON, Table and watch responses.
//! - [`status`]: refusals as a Kubernetes `Status` object.
//! - [`flavor`]: the [`KubeFlavor`] the HTTP listener uses for
//!   `kind = "kubernetes"` connections (commands, credentials, masking, exec).

pub mod ephemeral;
pub mod flavor;
pub mod kubelet;
pub mod mask;
pub mod path;
pub mod policy;
pub mod settings;
pub mod status;
pub mod tls;

pub use flavor::{kube_flavor, KubeFlavor};
pub use policy::kube_match_key;
