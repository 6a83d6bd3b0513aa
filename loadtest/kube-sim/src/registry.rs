//! The simulated container registry: which images exist, which need credentials, and the error texts
//! containerd gives the kubelet when a pull fails.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// What the registry says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    /// The image exists and anyone may pull it.
    Present,
    /// The image (tag or repository) does not exist: `not found`.
    Missing,
    /// The repository needs credentials: pulls without a valid pull secret get `unauthorized`.
    Private,
}

/// Images and repositories with a state other than the default (`Present`).
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, ImageState>>,
}

/// Why a pull failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    /// The reference cannot be parsed (`InvalidImageName`).
    InvalidName(String),
    /// `ErrImagePull` with containerd's message.
    Failed(String),
}

/// The repository part of an image reference (without tag or digest).
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    }
}

/// Whether `image` is a reference containerd can parse.
pub fn is_valid_reference(image: &str) -> bool {
    if image.is_empty() || image.len() > 4096 || image.chars().any(|c| c.is_whitespace()) {
        return false;
    }
    let without_digest = image.split('@').next().unwrap_or(image);
    let (repo, tag) = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (without_digest, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    });
    let mut parts = repo.split('/').collect::<Vec<_>>();
    // The first component may be a registry host with a port.
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        parts.remove(0);
    }
    let path_ok = !parts.is_empty()
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.ends_with(|c: char| c.is_ascii_alphanumeric())
        });
    tag_ok && path_ok
}

impl Registry {
    /// Sets the state of an exact image reference or of a whole repository.
    pub fn set(&self, image_or_repository: &str, state: ImageState) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(image_or_repository.to_owned(), state);
    }

    /// The state of `image`: an exact entry first, then its repository's, else present.
    pub fn state(&self, image: &str) -> ImageState {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(image).or_else(|| entries.get(repository(image))).copied().unwrap_or(ImageState::Present)
    }

    /// Pulls `image`; `authorized` says whether the pod has a pull secret that exists.
    pub fn pull(&self, image: &str, authorized: bool) -> Result<(), PullError> {
        if !is_valid_reference(image) {
            return Err(PullError::InvalidName(format!(
                "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"
            )));
        }
        match self.state(image) {
            ImageState::Present => Ok(()),
            ImageState::Private if authorized => Ok(()),
            ImageState::Missing => Err(PullError::Failed(format!(
                "rpc error: code = NotFound desc = failed to pull and unpack image {image:?}: failed to resolve reference {image:?}: {image}: not found"
            ))),
            ImageState::Private => Err(PullError::Failed(format!(
                "rpc error: code = Unknown desc = failed to pull and unpack image {image:?}: failed to resolve reference {image:?}: pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_containerd() {
        for good in
            ["nginx", "nginx:1.27", "registry.local/shop/web:1.4.2", "localhost:5000/a/b:x", "a/b@sha256:abc"]
        {
            assert!(is_valid_reference(good), "{good}");
        }
        for bad in ["", "Nginx:1", "shop/web:1 2", "web:", "a//b", "-a:1"] {
            assert!(!is_valid_reference(bad), "{bad}");
        }
        assert_eq!(repository("registry.local:5000/shop/web:1.4.2"), "registry.local:5000/shop/web");
    }

    #[test]
    fn missing_and_private_images_fail_with_containerd_messages() {
        let registry = Registry::default();
        registry.set("registry.local/shop/web:9.9.9", ImageState::Missing);
        registry.set("registry.local/private/app", ImageState::Private);
        assert!(registry.pull("registry.local/shop/web:1.4.2", false).is_ok());
        let Err(PullError::Failed(message)) = registry.pull("registry.local/shop/web:9.9.9", false) else {
            panic!("missing")
        };
        assert!(message.ends_with("registry.local/shop/web:9.9.9: not found"), "{message}");
        let Err(PullError::Failed(message)) = registry.pull("registry.local/private/app:1", false) else {
            panic!("private")
        };
        assert!(message.contains("authorization failed"));
        assert!(registry.pull("registry.local/private/app:1", true).is_ok());
        assert!(matches!(registry.pull("Bad:Name", true), Err(PullError::InvalidName(_))));
    }
}
