//! Task definitions: the subset of RegisterTaskDefinition the templates use,
//! read from the rendered JSON and from DescribeTaskDefinition, normalised
//! so that "differs from the latest revision" means a real difference.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, HostVolumeProperties, KeyValuePair, MountPoint,
    NetworkMode, PortMapping, TaskDefinition, TransportProtocol, Volume,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefSpec {
    pub family: String,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub requires_compatibilities: Vec<String>,
    pub container_definitions: Vec<ContainerSpec>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// The task's own IAM role (the controller's, when `up` makes it).
    #[serde(default)]
    pub task_role_arn: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub essential: Option<bool>,
    #[serde(default)]
    pub memory: Option<i32>,
    /// Arguments to the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub port_mappings: Vec<PortSpec>,
    #[serde(default)]
    pub environment: Vec<EnvSpec>,
    #[serde(default)]
    pub mount_points: Vec<MountSpec>,
    #[serde(default)]
    pub docker_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub container_port: i32,
    #[serde(default)]
    pub host_port: Option<i32>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountSpec {
    pub source_volume: String,
    pub container_path: String,
    #[serde(default)]
    pub read_only: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: String,
    #[serde(default)]
    pub host: Option<HostSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSpec {
    #[serde(default)]
    pub source_path: Option<String>,
}

impl TaskDefSpec {
    /// Parses rendered JSON; environment entries with an empty value are
    /// dropped (an optional setting left unset), and so are host volumes
    /// with an empty `sourcePath`, with their mount points (an optional
    /// mount, such as the TLS directory).
    pub fn parse(json: &str) -> serde_json::Result<Self> {
        let mut spec: Self = serde_json::from_str(json)?;
        let unset: Vec<String> = spec
            .volumes
            .iter()
            .filter(|v| {
                v.host
                    .as_ref()
                    .is_some_and(|h| h.source_path.as_deref() == Some(""))
            })
            .map(|v| v.name.clone())
            .collect();
        spec.volumes.retain(|v| !unset.contains(&v.name));
        if spec.task_role_arn.as_deref() == Some("") {
            spec.task_role_arn = None;
        }
        for c in &mut spec.container_definitions {
            c.environment.retain(|e| !e.value.is_empty());
            c.mount_points.retain(|m| !unset.contains(&m.source_volume));
        }
        Ok(spec.normalized())
    }

    /// Fills ECS's defaults and sorts what ECS does not keep in order.
    #[must_use]
    pub fn normalized(mut self) -> Self {
        let mode = self
            .network_mode
            .get_or_insert_with(|| "bridge".to_owned())
            .clone();
        self.requires_compatibilities.sort();
        for c in &mut self.container_definitions {
            c.essential.get_or_insert(true);
            c.environment.sort();
            for m in &mut c.mount_points {
                m.read_only.get_or_insert(false);
            }
            for p in &mut c.port_mappings {
                p.protocol.get_or_insert_with(|| "tcp".to_owned());
                let default_host = if mode == "bridge" {
                    0
                } else {
                    p.container_port
                };
                p.host_port.get_or_insert(default_host);
            }
        }
        self
    }

    /// Reads a described task definition back into the same shape.
    pub fn from_sdk(td: &TaskDefinition) -> Self {
        let containers = td
            .container_definitions()
            .iter()
            .map(|c| ContainerSpec {
                name: c.name().unwrap_or_default().to_owned(),
                image: c.image().unwrap_or_default().to_owned(),
                essential: c.essential(),
                memory: c.memory(),
                command: c.command().to_vec(),
                port_mappings: c
                    .port_mappings()
                    .iter()
                    .map(|p| PortSpec {
                        container_port: p.container_port().unwrap_or_default(),
                        host_port: p.host_port(),
                        protocol: p.protocol().map(|p| p.as_str().to_owned()),
                    })
                    .collect(),
                environment: c
                    .environment()
                    .iter()
                    .map(|e| EnvSpec {
                        name: e.name().unwrap_or_default().to_owned(),
                        value: e.value().unwrap_or_default().to_owned(),
                    })
                    .collect(),
                mount_points: c
                    .mount_points()
                    .iter()
                    .map(|m| MountSpec {
                        source_volume: m.source_volume().unwrap_or_default().to_owned(),
                        container_path: m.container_path().unwrap_or_default().to_owned(),
                        read_only: m.read_only(),
                    })
                    .collect(),
                docker_labels: c
                    .docker_labels()
                    .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Self {
            family: td.family().unwrap_or_default().to_owned(),
            network_mode: td.network_mode().map(|m| m.as_str().to_owned()),
            task_role_arn: td.task_role_arn().map(str::to_owned),
            requires_compatibilities: td
                .requires_compatibilities()
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            container_definitions: containers,
            volumes: td
                .volumes()
                .iter()
                .map(|v| VolumeSpec {
                    name: v.name().unwrap_or_default().to_owned(),
                    host: v.host().map(|h| HostSpec {
                        source_path: h.source_path().map(str::to_owned),
                    }),
                })
                .collect(),
        }
        .normalized()
    }

    /// The RegisterTaskDefinition pieces.
    pub fn containers_sdk(&self) -> Vec<ContainerDefinition> {
        self.container_definitions
            .iter()
            .map(|c| {
                let mut b = ContainerDefinition::builder()
                    .name(&c.name)
                    .image(&c.image)
                    .set_essential(c.essential)
                    .set_memory(c.memory);
                if !c.command.is_empty() {
                    b = b.set_command(Some(c.command.clone()));
                }
                for p in &c.port_mappings {
                    b = b.port_mappings(
                        PortMapping::builder()
                            .container_port(p.container_port)
                            .set_host_port(p.host_port)
                            .set_protocol(p.protocol.as_deref().map(TransportProtocol::from))
                            .build(),
                    );
                }
                for e in &c.environment {
                    b = b.environment(
                        KeyValuePair::builder()
                            .name(&e.name)
                            .value(&e.value)
                            .build(),
                    );
                }
                for m in &c.mount_points {
                    b = b.mount_points(
                        MountPoint::builder()
                            .source_volume(&m.source_volume)
                            .container_path(&m.container_path)
                            .set_read_only(m.read_only)
                            .build(),
                    );
                }
                for (k, v) in &c.docker_labels {
                    b = b.docker_labels(k, v);
                }
                b.build()
            })
            .collect()
    }

    pub fn volumes_sdk(&self) -> Vec<Volume> {
        self.volumes
            .iter()
            .map(|v| {
                Volume::builder()
                    .name(&v.name)
                    .set_host(v.host.as_ref().map(|h| {
                        HostVolumeProperties::builder()
                            .set_source_path(h.source_path.clone())
                            .build()
                    }))
                    .build()
            })
            .collect()
    }

    pub fn network_mode_sdk(&self) -> Option<NetworkMode> {
        self.network_mode.as_deref().map(NetworkMode::from)
    }

    pub fn compatibilities_sdk(&self) -> Vec<Compatibility> {
        self.requires_compatibilities
            .iter()
            .map(|c| Compatibility::from(c.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_settings_and_host_paths_are_dropped() {
        let json = r#"{
          "family": "f",
          "containerDefinitions": [{
            "name": "c", "image": "i",
            "environment": [{ "name": "A", "value": "" }, { "name": "B", "value": "b" }],
            "mountPoints": [
              { "sourceVolume": "off", "containerPath": "/off", "readOnly": true },
              { "sourceVolume": "on", "containerPath": "/on" }
            ]
          }],
          "volumes": [
            { "name": "off", "host": { "sourcePath": "" } },
            { "name": "on", "host": { "sourcePath": "/on" } }
          ]
        }"#;
        let spec = TaskDefSpec::parse(json).unwrap();
        let c = &spec.container_definitions[0];
        assert_eq!(c.environment.len(), 1);
        assert_eq!(c.environment[0].name, "B");
        assert_eq!(c.mount_points.len(), 1);
        assert_eq!(c.mount_points[0].source_volume, "on");
        assert_eq!(spec.volumes.len(), 1);
        assert_eq!(spec.volumes[0].name, "on");
    }
}
