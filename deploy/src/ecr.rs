//! The mesh's own images in ECR (`deploy up --build-images` or
//! `--images-dir`): one repository per image, named
//! [`DeployConfig::ecr_repository`] and tagged `ecsmesh:owner=<cluster>`,
//! with scan on push and immutable tags. The images come from an OCI layout
//! that `scripts/images.sh` built; each is pushed with `skopeo` using ECR's
//! authorization token, under the tag `<version>-<first 12 hex digits of
//! its digest>` (immutable tags: a new build is a new tag), and the task
//! definitions and the user data name it by digest,
//! `<repositoryUri>@sha256:…`, so that what runs is exactly what was built.
//!
//! A resource module like every other (`Resource`): observe (the local build, each
//! repository, whether the registry has each image), plan (`plan_images`,
//! pure: `plan_repository` for each repository, a push for each image the
//! registry lacks), apply (or, dry, only report), destroy (the
//! repositories that are ours, with their images).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aws_sdk_ecr as ecr;
use base64::Engine as _;
use ecr::types::{ImageTagMutability, Tag};
use serde_json::{Value, json};

use crate::config::{DeployConfig, IMAGE_NAMES, ImagesConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// The step kinds of this module's report lines.
const REPOSITORY: &str = "ecr-repository";
const IMAGE: &str = "image";

/// The listing `scripts/images.sh` writes beside the layout: name, tag,
/// manifest digest, compressed size.
const LISTING: &str = "images.txt";
/// The OCI image layout `scripts/images.sh` writes (refs `<name>-<tag>`).
const LAYOUT: &str = "oci";

/// One image of the local layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    /// `agent`, `controller` or `helloworld`.
    pub name: String,
    /// The version `scripts/images.sh` tagged it with.
    pub tag: String,
    /// The manifest's digest, `sha256:<64 hex>`.
    pub digest: String,
}

impl LocalImage {
    /// The tag it is pushed under: the version and the digest's first 12
    /// hex digits, so that an immutable repository takes every new build.
    pub fn push_tag(&self) -> String {
        let hex = self.digest.trim_start_matches("sha256:");
        format!("{}-{}", self.tag, &hex[..12.min(hex.len())])
    }
}

/// Reads the images `scripts/images.sh` left in `dir`: the listing, each
/// entry checked against the layout's index (a listing from an older build
/// than the layout is refused rather than pushed).
pub fn local_images(dir: &Path) -> Result<Vec<LocalImage>> {
    let listing_path = dir.join(LISTING);
    let listing =
        std::fs::read_to_string(&listing_path).map_err(DeployError::local(&listing_path))?;
    let index_path = dir.join(LAYOUT).join("index.json");
    let index = std::fs::read_to_string(&index_path).map_err(DeployError::local(&index_path))?;
    let index: Value = serde_json::from_str(&index).map_err(|e| {
        DeployError::Images(format!("{}: not an OCI index: {e}", index_path.display()))
    })?;
    // ref name -> digest, as the layout holds them.
    let refs: BTreeMap<&str, &str> = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            Some((
                m["annotations"]["org.opencontainers.image.ref.name"].as_str()?,
                m["digest"].as_str()?,
            ))
        })
        .collect();
    let mut images = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, tag, digest, ..] = fields.as_slice() else {
            return Err(DeployError::Images(format!(
                "{}: bad line {line:?}",
                listing_path.display()
            )));
        };
        let well_formed = digest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }) && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !well_formed {
            return Err(DeployError::Images(format!(
                "{}: bad tag or digest in {line:?}",
                listing_path.display()
            )));
        }
        let reference = format!("{name}-{tag}");
        if refs.get(reference.as_str()) != Some(digest) {
            return Err(DeployError::Images(format!(
                "{}: {reference} is {digest} in {LISTING} but {} in the layout: rebuild the images",
                dir.display(),
                refs.get(reference.as_str()).unwrap_or(&"absent"),
            )));
        }
        images.push(LocalImage {
            name: (*name).to_owned(),
            tag: (*tag).to_owned(),
            digest: (*digest).to_owned(),
        });
    }
    for want in IMAGE_NAMES {
        if !images.iter().any(|i| i.name == want) {
            return Err(DeployError::Images(format!(
                "{}: no {want} image (expected {IMAGE_NAMES:?} from scripts/images.sh)",
                dir.display()
            )));
        }
    }
    images.retain(|i| IMAGE_NAMES.contains(&i.name.as_str()));
    Ok(images)
}

/// Runs `scripts/images.sh` (from the source tree `root`) to build the
/// images into `dir`; its output goes to this process's stderr.
pub fn build_images(root: &Path, dir: &Path) -> Result<()> {
    let script = root.join("scripts/images.sh");
    if !script.is_file() {
        return Err(DeployError::Images(format!(
            "{} not found: run from the ecsmesh source tree, or pass --images-dir with images \
             built by `make images`",
            script.display()
        )));
    }
    tracing::info!(dir = %dir.display(), "building the images with scripts/images.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("IMAGES_DIR", dir)
        // Its stdout too: ours may be the report (`-o json`).
        .stdout(std::io::stderr())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(DeployError::local(&script))?;
    if status.success() {
        Ok(())
    } else {
        Err(DeployError::Images(format!(
            "scripts/images.sh failed ({status})"
        )))
    }
}

/// The image each task definition and the user data name, by image name
/// (`agent`, `controller`, `helloworld`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageRefs(BTreeMap<&'static str, String>);

impl ImageRefs {
    /// `--image-repo`/`--image-tag`: images someone else pushed.
    pub(crate) fn from_repo(cfg: &DeployConfig) -> Self {
        let repo_name = |name: &str| match name {
            "helloworld" => "ecsmesh-hello-world".to_owned(),
            n => format!("ecsmesh-{n}"),
        };
        Self(
            IMAGE_NAMES
                .iter()
                .map(|n| {
                    (
                        *n,
                        format!("{}/{}:{}", cfg.image_repo, repo_name(n), cfg.image_tag),
                    )
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> String {
        self.0.get(name).cloned().unwrap_or_default()
    }
}

/// A repository that exists.
#[derive(Clone, Debug)]
pub(crate) struct Repository {
    uri: String,
    arn: String,
    scan_on_push: bool,
    immutable: bool,
    /// Tagged `ecsmesh:owner=<cluster>`: ours to change and delete.
    owned: bool,
}

/// What `up` does to one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RepositoryPlan {
    Create,
    /// Ours but its settings drifted: each named.
    Update(Vec<&'static str>),
    Unchanged,
    /// Someone else's (no owner tag): pushed to, its settings left alone.
    Foreign,
}

/// Compares a repository with what `up` makes (no I/O).
pub(crate) fn plan_repository(have: Option<&Repository>) -> RepositoryPlan {
    let Some(r) = have else {
        return RepositoryPlan::Create;
    };
    if !r.owned {
        return RepositoryPlan::Foreign;
    }
    let mut diffs = Vec::new();
    if !r.scan_on_push {
        diffs.push("scan on push");
    }
    if !r.immutable {
        diffs.push("immutable tags");
    }
    if diffs.is_empty() {
        RepositoryPlan::Unchanged
    } else {
        RepositoryPlan::Update(diffs)
    }
}

/// Where images are pushed: the account's registry (ECR's proxy endpoint)
/// or the `--registry-endpoint` override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Registry {
    /// `host[:port]`, as a `docker://` reference starts.
    host: String,
    /// Verify TLS (an `http://` override pushes in plain HTTP).
    tls: bool,
    /// ECR's token: base64 of `AWS:<password>`, the auth file's `auth`.
    auth: String,
}

/// `https://host[:port]`, `http://host[:port]` or `host[:port]` (https).
pub(crate) fn parse_endpoint(url: &str) -> Option<(String, bool)> {
    let (rest, tls) = match url.split_once("://") {
        Some(("https", rest)) => (rest, true),
        Some(("http", rest)) => (rest, false),
        Some(_) => return None,
        None => (url, true),
    };
    let host = rest.trim_end_matches('/');
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    ok.then(|| (host.to_owned(), tls))
}

/// The images as they are.
#[derive(Debug)]
pub(crate) enum ObservedImages {
    /// `--image-repo`: nothing of `up`'s (not looked up).
    FromRepo,
    /// The local build, each image's repository, and whether the registry
    /// already has each image (by image name).
    Built {
        local: Vec<LocalImage>,
        repos: BTreeMap<&'static str, Option<Repository>>,
        registry: Registry,
        account_host: String,
        pushed: BTreeMap<&'static str, bool>,
    },
    /// Not built yet (`--build-images` before the build): the
    /// repositories, and what a run that is not a plan fails with.
    Unbuilt {
        repos: BTreeMap<&'static str, Option<Repository>>,
        account_host: String,
        error: DeployError,
    },
}

/// What `up` does for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImagePlan {
    /// `agent`, `controller` or `helloworld`.
    key: &'static str,
    /// Its repository's name and plan.
    repository: String,
    repository_plan: RepositoryPlan,
    /// What the task definitions name: `<repositoryUri>@<digest>`.
    pinned: String,
    push: PushPlan,
}

/// Whether an image is pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PushPlan {
    /// The registry has its digest.
    Pushed,
    Push {
        local: LocalImage,
        target: String,
    },
    /// Not built yet: built, then pushed (a plan only).
    ToBuild {
        uri: String,
    },
}

/// What `up` does for each image, from what exists (no I/O); `None` with
/// `--image-repo`.
pub(crate) fn plan_images(cfg: &DeployConfig, have: &ObservedImages) -> Option<Vec<ImagePlan>> {
    // Not made yet: ECR's URIs are the registry's host and the name.
    let uri = |repo: Option<&Repository>, host: &str, name: &str| {
        repo.map_or_else(|| format!("{host}/{name}"), |r| r.uri.clone())
    };
    match have {
        ObservedImages::FromRepo => None,
        ObservedImages::Built {
            local,
            repos,
            registry,
            account_host,
            pushed,
        } => Some(
            local
                .iter()
                .filter_map(|image| {
                    let key = IMAGE_NAMES.iter().copied().find(|n| *n == image.name)?;
                    let name = cfg.ecr_repository(key);
                    let repo = repos.get(key).and_then(Option::as_ref);
                    let push = if pushed.get(key).copied().unwrap_or(false) {
                        PushPlan::Pushed
                    } else {
                        PushPlan::Push {
                            local: image.clone(),
                            target: format!("{}/{name}:{}", registry.host, image.push_tag()),
                        }
                    };
                    Some(ImagePlan {
                        key,
                        pinned: format!("{}@{}", uri(repo, account_host, &name), image.digest),
                        repository_plan: plan_repository(repo),
                        repository: name,
                        push,
                    })
                })
                .collect(),
        ),
        ObservedImages::Unbuilt {
            repos,
            account_host,
            ..
        } => Some(
            repos
                .iter()
                .map(|(key, repo)| {
                    let name = cfg.ecr_repository(key);
                    let uri = uri(repo.as_ref(), account_host, &name);
                    ImagePlan {
                        key,
                        repository_plan: plan_repository(repo.as_ref()),
                        repository: name,
                        pinned: format!("{uri}@sha256:(to be built)"),
                        push: PushPlan::ToBuild { uri },
                    }
                })
                .collect(),
        ),
    }
}

/// The ECR repositories and the image pushes (with `--build-images` or
/// `--images-dir`).
pub(crate) struct Images;

impl Resource for Images {
    const KIND: Kind = Kind::Images;
    type Wanted = ();
    type Observed = ObservedImages;
    /// `None`: `--image-repo`, nothing to do.
    type Plan = Option<Vec<ImagePlan>>;
    /// What the task definitions and the user data name.
    type Output = ImageRefs;

    async fn observe(d: &Deployer, (): &()) -> Result<ObservedImages> {
        let Some(images) = &d.cfg.images else {
            return Ok(ObservedImages::FromRepo);
        };
        let local = match local_images(&images.dir) {
            Ok(l) => l,
            // Before the first build: a plan of the build's pushes.
            Err(error @ DeployError::Local { .. }) if images.build => {
                let repos = d.observe_repositories().await?;
                let (_, account_host) = d.registry(images).await?;
                return Ok(ObservedImages::Unbuilt {
                    repos,
                    account_host,
                    error,
                });
            }
            Err(e) => return Err(e),
        };
        let repos = d.observe_repositories().await?;
        let (registry, account_host) = d.registry(images).await?;
        let mut pushed = BTreeMap::new();
        for image in &local {
            let Some(key) = IMAGE_NAMES.iter().copied().find(|n| *n == image.name) else {
                continue;
            };
            let name = d.cfg.ecr_repository(key);
            // Where it is pushed is where it is looked for: ECR itself, or
            // the override (which ECR's API knows nothing of).
            let there = match (
                repos.get(key).and_then(Option::as_ref),
                &images.registry_endpoint,
            ) {
                (None, _) => false,
                (Some(_), None) => d.ecr_has(&name, &image.digest).await?,
                (Some(_), Some(_)) => {
                    let by_digest = format!("{}/{name}@{}", registry.host, image.digest);
                    skopeo_has(&by_digest, &image.digest, &registry).await?
                }
            };
            pushed.insert(key, there);
        }
        Ok(ObservedImages::Built {
            local,
            repos,
            registry,
            account_host,
            pushed,
        })
    }

    fn plan(cfg: &DeployConfig, (): &(), have: &ObservedImages) -> Result<Self::Plan> {
        Ok(plan_images(cfg, have))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        have: ObservedImages,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<ImageRefs> {
        d.apply_images(dry_run, have, plan.unwrap_or_default(), steps)
            .await
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_images(dry_run, steps).await
    }
}

fn owner_tag(owner: &str) -> Result<Tag> {
    Tag::builder()
        .key(OWNER_TAG)
        .value(owner)
        .build()
        .map_err(|e| DeployError::State(format!("tagging an ECR repository: {e}")))
}

impl Deployer {
    /// Each image's repository (by image name), when it exists.
    async fn observe_repositories(&self) -> Result<BTreeMap<&'static str, Option<Repository>>> {
        let mut out = BTreeMap::new();
        for image in IMAGE_NAMES {
            let name = self.cfg.ecr_repository(image);
            let found = match self
                .ecr
                .describe_repositories()
                .repository_names(&name)
                .send()
                .await
            {
                Ok(o) => o.repositories().first().cloned(),
                Err(e)
                    if e.as_service_error().is_some_and(
                        ecr::operation::describe_repositories::DescribeRepositoriesError::is_repository_not_found_exception,
                    ) =>
                {
                    None
                }
                Err(e) => return Err(DeployError::aws("DescribeRepositories", &name, &e)),
            };
            let repo = match found {
                Some(r) => {
                    let arn = r.repository_arn().unwrap_or_default().to_owned();
                    let tags = self
                        .ecr
                        .list_tags_for_resource()
                        .resource_arn(&arn)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("ListTagsForResource", &name, &e))?;
                    Some(Repository {
                        uri: r.repository_uri().unwrap_or_default().to_owned(),
                        arn,
                        scan_on_push: r
                            .image_scanning_configuration()
                            .is_some_and(ecr::types::ImageScanningConfiguration::scan_on_push),
                        immutable: r.image_tag_mutability() == Some(&ImageTagMutability::Immutable),
                        owned: tags
                            .tags()
                            .iter()
                            .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner()),
                    })
                }
                None => None,
            };
            out.insert(image, repo);
        }
        Ok(out)
    }

    /// ECR's token and the registry to push to (`registry_endpoint`
    /// overrides the account's, for a mirror or a test registry).
    async fn registry(&self, images: &ImagesConfig) -> Result<(Registry, String)> {
        let out = self
            .ecr
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| DeployError::aws("GetAuthorizationToken", "ecr", &e))?;
        let data = out.authorization_data().first().ok_or_else(|| {
            DeployError::State("GetAuthorizationToken: no authorization data".to_owned())
        })?;
        let auth = data.authorization_token().unwrap_or_default().to_owned();
        // A token that is not base64 of `AWS:<password>` would only fail
        // later, inside skopeo, with a less helpful message.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&auth)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if !decoded.is_some_and(|d| d.starts_with("AWS:") && d.len() > 4) {
            return Err(DeployError::State(
                "GetAuthorizationToken: the token is not base64 of AWS:<password>".to_owned(),
            ));
        }
        let proxy = data.proxy_endpoint().unwrap_or_default();
        let (account_host, _) = parse_endpoint(proxy).ok_or_else(|| {
            DeployError::State(format!(
                "GetAuthorizationToken: bad proxy endpoint {proxy:?}"
            ))
        })?;
        let (host, tls) = match &images.registry_endpoint {
            Some(url) => parse_endpoint(url).ok_or_else(|| DeployError::Config {
                name: "registry-endpoint",
                reason: format!("{url:?} is not http(s)://host[:port]"),
            })?,
            None => (account_host.clone(), true),
        };
        Ok((Registry { host, tls, auth }, account_host))
    }

    /// Carries out the images' plan: each repository, then each image
    /// pushed unless the registry has its digest.
    async fn apply_images(
        &self,
        dry_run: bool,
        have: ObservedImages,
        plan: Vec<ImagePlan>,
        steps: &mut Vec<Step>,
    ) -> Result<ImageRefs> {
        let (repos, registry) = match have {
            ObservedImages::FromRepo => return Ok(ImageRefs::from_repo(&self.cfg)),
            ObservedImages::Built {
                repos, registry, ..
            } => (repos, Some(registry)),
            // Only a plan can be made before the build.
            ObservedImages::Unbuilt { error, .. } if !dry_run => return Err(error),
            ObservedImages::Unbuilt { repos, .. } => (repos, None),
        };
        let dir = self.cfg.images.as_ref().map(|i| i.dir.as_path());
        let mut refs = BTreeMap::new();
        for image in plan {
            let have = repos.get(image.key).and_then(Option::as_ref);
            self.apply_repository(
                dry_run,
                &image.repository,
                have,
                image.repository_plan,
                steps,
            )
            .await?;
            match image.push {
                PushPlan::Pushed => {
                    let detail = "pushed before";
                    self.push(steps, IMAGE, &image.pinned, Action::Unchanged, detail);
                }
                PushPlan::Push { local, target } => {
                    if !dry_run && let (Some(dir), Some(registry)) = (dir, &registry) {
                        self.skopeo_push(dir, &local, &target, registry).await?;
                    }
                    let detail = format!("push {target}");
                    self.push(steps, IMAGE, &image.pinned, Action::Create, detail);
                }
                PushPlan::ToBuild { uri } => {
                    let detail = "built by scripts/images.sh, then pushed";
                    self.push(steps, IMAGE, &uri, Action::Create, detail);
                }
            }
            refs.insert(image.key, image.pinned);
        }
        Ok(ImageRefs(refs))
    }

    /// Creates a repository or puts its settings right.
    async fn apply_repository(
        &self,
        dry_run: bool,
        name: &str,
        have: Option<&Repository>,
        plan: RepositoryPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        match plan {
            RepositoryPlan::Create => {
                if !dry_run {
                    self.ecr
                        .create_repository()
                        .repository_name(name)
                        .image_tag_mutability(ImageTagMutability::Immutable)
                        .image_scanning_configuration(
                            ecr::types::ImageScanningConfiguration::builder()
                                .scan_on_push(true)
                                .build(),
                        )
                        .tags(owner_tag(self.cfg.owner())?)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("CreateRepository", name, &e))?;
                }
                let detail = "scan on push, immutable tags";
                self.push(steps, REPOSITORY, name, Action::Create, detail);
            }
            RepositoryPlan::Update(diffs) => {
                if !dry_run {
                    self.ecr
                        .put_image_scanning_configuration()
                        .repository_name(name)
                        .image_scanning_configuration(
                            ecr::types::ImageScanningConfiguration::builder()
                                .scan_on_push(true)
                                .build(),
                        )
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("PutImageScanningConfiguration", name, &e))?;
                    self.ecr
                        .put_image_tag_mutability()
                        .repository_name(name)
                        .image_tag_mutability(ImageTagMutability::Immutable)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("PutImageTagMutability", name, &e))?;
                }
                self.push(steps, REPOSITORY, name, Action::Update, diffs.join(", "));
            }
            RepositoryPlan::Unchanged => {
                let arn = have.map(|r| r.arn.as_str()).unwrap_or_default();
                self.push(steps, REPOSITORY, name, Action::Unchanged, arn);
            }
            RepositoryPlan::Foreign => {
                let detail = "not owned by ecsmesh: pushed to, settings left alone";
                self.push(steps, REPOSITORY, name, Action::Unchanged, detail);
            }
        }
        Ok(())
    }

    /// Whether the repository already holds that manifest (a push would
    /// change nothing; with immutable tags it could even be refused).
    async fn ecr_has(&self, repository: &str, digest: &str) -> Result<bool> {
        let id = ecr::types::ImageIdentifier::builder()
            .image_digest(digest)
            .build();
        match self
            .ecr
            .describe_images()
            .repository_name(repository)
            .image_ids(id)
            .send()
            .await
        {
            Ok(out) => Ok(!out.image_details().is_empty()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_image_not_found_exception() || s.is_repository_not_found_exception()
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(DeployError::aws("DescribeImages", repository, &e)),
        }
    }

    /// `skopeo copy` from the layout to `target`, with ECR's token in a
    /// private auth file (not on the command line, where `ps` shows it),
    /// then checks the digest the registry got.
    async fn skopeo_push(
        &self,
        dir: &Path,
        image: &LocalImage,
        target: &str,
        registry: &Registry,
    ) -> Result<()> {
        let (work, authfile) = auth_file(registry)?;
        let digestfile = work.path().join("digest");
        let source = format!(
            "oci:{}:{}-{}",
            dir.join(LAYOUT).display(),
            image.name,
            image.tag
        );
        let args: Vec<String> = vec![
            "copy".into(),
            "-q".into(),
            "--dest-authfile".into(),
            authfile.display().to_string(),
            format!("--dest-tls-verify={}", registry.tls),
            "--digestfile".into(),
            digestfile.display().to_string(),
            source,
            format!("docker://{target}"),
        ];
        self.progress_only(IMAGE, target, Action::Create, "pushing with skopeo");
        tracing::info!(%target, digest = %image.digest, "pushing an image");
        let out = skopeo(args).await?;
        if !out.status.success() {
            return Err(DeployError::Images(format!(
                "skopeo copy to {target} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pushed =
            std::fs::read_to_string(&digestfile).map_err(DeployError::local(&digestfile))?;
        if pushed.trim() != image.digest {
            return Err(DeployError::Images(format!(
                "{target}: the registry has {} where {} was pushed",
                pushed.trim(),
                image.digest
            )));
        }
        Ok(())
    }

    /// `down`'s repositories: each deleted with its images when tagged ours.
    async fn destroy_images(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        for (image, repo) in self.observe_repositories().await? {
            let name = self.cfg.ecr_repository(image);
            match repo {
                Some(r) if r.owned => {
                    if !dry_run {
                        self.ecr
                            .delete_repository()
                            .repository_name(&name)
                            .force(true)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("DeleteRepository", &name, &e))?;
                    }
                    self.push(steps, REPOSITORY, &name, Action::Delete, "with its images");
                }
                Some(_) => self.push_kept(steps, REPOSITORY, &name),
                None => self.push(steps, REPOSITORY, &name, Action::Absent, ""),
            }
        }
        Ok(())
    }
}

/// A private temporary directory with a containers auth file holding
/// ECR's token for the registry (both go when the directory is dropped).
fn auth_file(registry: &Registry) -> Result<(tempfile::TempDir, PathBuf)> {
    let work = tempfile::tempdir().map_err(DeployError::local(&std::env::temp_dir()))?;
    let authfile = work.path().join("auth.json");
    let auth = json!({ "auths": { &registry.host: { "auth": &registry.auth } } });
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&authfile)
        .and_then(|mut f| f.write_all(auth.to_string().as_bytes()))
        .map_err(DeployError::local(&authfile))?;
    Ok((work, authfile))
}

async fn skopeo(args: Vec<String>) -> Result<std::process::Output> {
    tokio::task::spawn_blocking(move || std::process::Command::new("skopeo").args(&args).output())
        .await
        .map_err(|e| DeployError::Images(format!("skopeo: {e}")))?
        .map_err(|e| DeployError::Images(format!("skopeo: {e} (install skopeo: make deps)")))
}

/// Whether the registry serves `reference` (`host/name@digest`) as that
/// digest: a manifest it does not have is an answer (no), not a failure.
async fn skopeo_has(reference: &str, digest: &str, registry: &Registry) -> Result<bool> {
    let (_work, authfile) = auth_file(registry)?;
    let out = skopeo(vec![
        "inspect".into(),
        "--authfile".into(),
        authfile.display().to_string(),
        format!("--tls-verify={}", registry.tls),
        "--format".into(),
        "{{.Digest}}".into(),
        format!("docker://{reference}"),
    ])
    .await?;
    if !out.status.success() {
        tracing::debug!(%reference, stderr = %String::from_utf8_lossy(&out.stderr), "not in the registry");
        return Ok(false);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim() == digest)
}

/// The images' directory `scripts/images.sh` uses by default.
pub fn default_images_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/ecsmesh/target")
        },
        PathBuf::from,
    );
    target.join("images")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(owned: bool, scan_on_push: bool, immutable: bool) -> Repository {
        Repository {
            uri: "1.dkr.ecr.r.amazonaws.com/x".to_owned(),
            arn: "arn:aws:ecr:r:1:repository/x".to_owned(),
            scan_on_push,
            immutable,
            owned,
        }
    }

    #[test]
    fn repositories_are_planned_from_what_exists() {
        assert_eq!(plan_repository(None), RepositoryPlan::Create);
        assert_eq!(
            plan_repository(Some(&repo(true, true, true))),
            RepositoryPlan::Unchanged
        );
        assert_eq!(
            plan_repository(Some(&repo(true, false, false))),
            RepositoryPlan::Update(vec!["scan on push", "immutable tags"])
        );
        // Someone else's: never changed.
        assert_eq!(
            plan_repository(Some(&repo(false, false, false))),
            RepositoryPlan::Foreign
        );
    }

    #[test]
    fn endpoints_parse_with_their_scheme() {
        assert_eq!(
            parse_endpoint("https://1.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("1.dkr.ecr.eu-west-1.amazonaws.com".to_owned(), true))
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:5000/"),
            Some(("127.0.0.1:5000".to_owned(), false))
        );
        assert_eq!(
            parse_endpoint("mirror.internal:443"),
            Some(("mirror.internal:443".to_owned(), true))
        );
        for bad in ["", "ftp://x", "http://", "http://a b", "http://a/b"] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }

    const D1: &str = "sha256:cd48f504e71a97922b368d438a4c3439d3a89751dcd25eb93fe2f0ab75fd1596";
    const D2: &str = "sha256:ad54261e1bdca234f97f2f13470764de461b06eb998adf1f6a4cc4b803460795";
    const D3: &str = "sha256:4d255638d44f8e98bbf7562ce45331cd56d11f2b243c7ce9dab9345f759da15a";

    fn layout(dir: &Path, listing: &str, index: &[(&str, &str)]) {
        std::fs::create_dir_all(dir.join(LAYOUT)).unwrap();
        std::fs::write(dir.join(LISTING), listing).unwrap();
        let manifests: Vec<Value> = index
            .iter()
            .map(|(r, d)| json!({"digest": d, "annotations": {"org.opencontainers.image.ref.name": r}}))
            .collect();
        std::fs::write(
            dir.join(LAYOUT).join("index.json"),
            json!({ "schemaVersion": 2, "manifests": manifests }).to_string(),
        )
        .unwrap();
    }

    #[test]
    fn local_images_must_match_the_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let listing =
            format!("agent 0.1.0 {D1} 8603645\ncontroller 0.1.0 {D2} 1\nhelloworld 0.1.0 {D3} 1\n");
        let index = [
            ("agent-0.1.0", D1),
            ("controller-0.1.0", D2),
            ("helloworld-0.1.0", D3),
        ];
        layout(dir, &listing, &index);
        let images = local_images(dir).unwrap();
        assert_eq!(images.len(), 3);
        assert_eq!(images[0].push_tag(), "0.1.0-cd48f504e71a");
        // A stale listing (the layout has another digest) is refused.
        layout(
            dir,
            &listing,
            &[index[0], index[1], ("helloworld-0.1.0", D1)],
        );
        let err = local_images(dir).unwrap_err().to_string();
        assert!(err.contains("rebuild"), "{err}");
        // A missing image, a bad digest: refused.
        layout(dir, &format!("agent 0.1.0 {D1} 1\n"), &index);
        assert!(
            local_images(dir)
                .unwrap_err()
                .to_string()
                .contains("no controller")
        );
        layout(dir, "agent 0.1.0 sha256:XYZ 1\n", &index);
        assert!(
            local_images(dir)
                .unwrap_err()
                .to_string()
                .contains("bad tag or digest")
        );
        assert!(local_images(&dir.join("nope")).is_err());
    }

    fn local(name: &str, digest: &str) -> LocalImage {
        LocalImage {
            name: name.to_owned(),
            tag: "0.1.0".to_owned(),
            digest: digest.to_owned(),
        }
    }

    #[test]
    fn images_are_pushed_only_where_the_registry_lacks_them() {
        let cfg = DeployConfig::new("c", "r");
        let have = ObservedImages::Built {
            local: vec![
                local("agent", D1),
                local("controller", D2),
                local("helloworld", D3),
            ],
            repos: BTreeMap::from([
                ("agent", Some(repo(true, true, true))),
                ("controller", Some(repo(true, false, true))),
                ("helloworld", None),
            ]),
            registry: Registry {
                host: "1.dkr.ecr.r.amazonaws.com".to_owned(),
                tls: true,
                auth: String::new(),
            },
            account_host: "1.dkr.ecr.r.amazonaws.com".to_owned(),
            pushed: BTreeMap::from([
                ("agent", true),
                ("controller", false),
                ("helloworld", false),
            ]),
        };
        let plan = plan_images(&cfg, &have).unwrap();
        let summary: Vec<(&str, &RepositoryPlan, bool)> = plan
            .iter()
            .map(|p| (p.key, &p.repository_plan, p.push == PushPlan::Pushed))
            .collect();
        assert_eq!(
            summary,
            [
                ("agent", &RepositoryPlan::Unchanged, true),
                (
                    "controller",
                    &RepositoryPlan::Update(vec!["scan on push"]),
                    false
                ),
                ("helloworld", &RepositoryPlan::Create, false),
            ]
        );
        // Pinned by digest, in the repository's URI (made from the
        // registry's host before the repository exists).
        assert_eq!(plan[0].pinned, format!("1.dkr.ecr.r.amazonaws.com/x@{D1}"));
        let helloworld = cfg.ecr_repository("helloworld");
        assert_eq!(
            plan[2].pinned,
            format!("1.dkr.ecr.r.amazonaws.com/{helloworld}@{D3}")
        );
        let PushPlan::Push { target, .. } = &plan[2].push else {
            panic!("{plan:?}");
        };
        assert_eq!(
            target,
            &format!("1.dkr.ecr.r.amazonaws.com/{helloworld}:0.1.0-4d255638d44f")
        );
    }

    #[test]
    fn a_plan_before_the_build_names_what_it_will_push() {
        let cfg = DeployConfig::new("c", "r");
        let have = ObservedImages::Unbuilt {
            repos: IMAGE_NAMES.iter().map(|n| (*n, None)).collect(),
            account_host: "1.dkr.ecr.r.amazonaws.com".to_owned(),
            error: DeployError::Images("not built".to_owned()),
        };
        let plan = plan_images(&cfg, &have).unwrap();
        assert_eq!(plan.len(), IMAGE_NAMES.len());
        for p in &plan {
            assert_eq!(p.repository_plan, RepositoryPlan::Create);
            assert!(p.pinned.ends_with("@sha256:(to be built)"), "{p:?}");
            assert!(
                matches!(&p.push, PushPlan::ToBuild { uri } if p.pinned.starts_with(uri.as_str()))
            );
        }
        assert_eq!(plan_images(&cfg, &ObservedImages::FromRepo), None);
    }
}
