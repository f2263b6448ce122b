//! The AWS [`Target`] and [`Switch`]: the image as an EBS snapshot and an AMI (both tagged
//! with the digest and reused by it), servers as EC2 instances (user data = the env's
//! config, tags = environment, digest, name), the identity gate over `GetConsoleOutput`,
//! and an ELBv2 target group as the switch (register, health, deregister = drain).

use super::client::Client;
use super::{blocks, ebs, AwsSpec, TAG_DIGEST, TAG_ENV};
use crate::deploy::model::{Image, Server, ServerSpec, Switch, Target, Upload};
use anyhow::{bail, Context, Result};
use base64::Engine;

/// The root device name the AMI declares (NVMe on Nitro types, named as EC2 wants).
const ROOT_DEVICE: &str = "/dev/xvda";

/// The text of every element named `tag` under `node`, in document order.
fn texts(node: roxmltree::Node, tag: &str) -> Vec<String> {
    node.descendants()
        .filter(|n| n.has_tag_name(tag))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

/// The first child element of `node` named `tag`.
fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(tag))
}

fn child_text(node: roxmltree::Node, tag: &str) -> Option<String> {
    child(node, tag)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

fn parse<'i>(call: &str, xml: &'i str) -> Result<roxmltree::Document<'i>> {
    roxmltree::Document::parse(xml).with_context(|| format!("{call}: the answer is not XML"))
}

/// The tags of an EC2 resource element (`tagSet/item/{key,value}`).
fn tags(node: roxmltree::Node) -> Vec<(String, String)> {
    child(node, "tagSet")
        .map(|s| {
            s.children()
                .filter(|n| n.has_tag_name("item"))
                .filter_map(|i| Some((child_text(i, "key")?, child_text(i, "value")?)))
                .collect()
        })
        .unwrap_or_default()
}

/// One instance as DescribeInstances shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub private_ip: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl Instance {
    fn tag(&self, k: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// The instances of a DescribeInstances answer.
pub fn instances(xml: &str) -> Result<Vec<Instance>> {
    let doc = parse("ec2:DescribeInstances", xml)?;
    let mut out = vec![];
    for set in doc.descendants().filter(|n| n.has_tag_name("instancesSet")) {
        for i in set.children().filter(|n| n.has_tag_name("item")) {
            let Some(id) = child_text(i, "instanceId") else {
                continue;
            };
            out.push(Instance {
                id,
                state: child(i, "instanceState")
                    .and_then(|s| child_text(s, "name"))
                    .unwrap_or_default(),
                private_ip: child_text(i, "privateIpAddress").filter(|s| !s.is_empty()),
                tags: tags(i),
            });
        }
    }
    Ok(out)
}

/// The query parameters of a tag specification (`TagSpecification.N`) for `resource`.
fn tag_spec(n: usize, resource: &str, tags: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = vec![(
        format!("TagSpecification.{n}.ResourceType"),
        resource.into(),
    )];
    for (i, (k, v)) in tags.iter().enumerate() {
        p.push((
            format!("TagSpecification.{n}.Tag.{}.Key", i + 1),
            k.to_string(),
        ));
        p.push((
            format!("TagSpecification.{n}.Tag.{}.Value", i + 1),
            v.to_string(),
        ));
    }
    p
}

/// The parameters of RegisterImage for a snapshot: the image's architecture, UEFI, ENA,
/// IMDSv2 required, HVM, one gp3 root volume deleted with the instance.
pub fn register_params(
    name: &str,
    description: &str,
    snapshot: &str,
    arch: crate::arch::Arch,
) -> Vec<(String, String)> {
    [
        ("Name", name),
        ("Description", description),
        ("Architecture", arch.ec2()),
        ("VirtualizationType", "hvm"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("RootDeviceName", ROOT_DEVICE),
        ("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// EC2 servers of one environment.
pub struct Ec2 {
    env: String,
    spec: AwsSpec,
    client: Option<Client>,
    /// The AMI of the image being deployed (set by put_image).
    ami: Option<String>,
}

impl Ec2 {
    pub fn new(env: &str, spec: AwsSpec) -> Ec2 {
        Ec2 {
            env: env.to_string(),
            spec,
            client: None,
            ami: None,
        }
    }

    fn c(&mut self) -> Result<&Client> {
        if self.client.is_none() {
            self.client = Some(
                Client::new(self.spec.region.as_deref())
                    .with_context(|| format!("environment {}: AWS credentials", self.env))?,
            );
        }
        self.client.as_ref().context("no AWS client")
    }

    fn query(&mut self, action: &str, params: Vec<(String, String)>) -> Result<String> {
        self.c()?.query("ec2", action, &params)
    }

    /// The completed snapshot tagged with `digest`, if any.
    fn snapshot_of(&mut self, digest: &str) -> Result<Option<String>> {
        let xml = self.query(
            "DescribeSnapshots",
            vec![
                ("Owner.1".into(), "self".into()),
                ("Filter.1.Name".into(), format!("tag:{TAG_DIGEST}")),
                ("Filter.1.Value.1".into(), digest.into()),
                ("Filter.2.Name".into(), "status".into()),
                ("Filter.2.Value.1".into(), "completed".into()),
            ],
        )?;
        let doc = parse("ec2:DescribeSnapshots", &xml)?;
        Ok(texts(doc.root(), "snapshotId").into_iter().next())
    }

    /// The available AMI tagged with `digest`, if any.
    fn image_of(&mut self, digest: &str) -> Result<Option<String>> {
        let xml = self.query(
            "DescribeImages",
            vec![
                ("Owner.1".into(), "self".into()),
                ("Filter.1.Name".into(), format!("tag:{TAG_DIGEST}")),
                ("Filter.1.Value.1".into(), digest.into()),
            ],
        )?;
        let doc = parse("ec2:DescribeImages", &xml)?;
        Ok(doc
            .descendants()
            .filter(|n| n.has_tag_name("item") && child(*n, "imageId").is_some())
            .find(|n| child_text(*n, "imageState").is_none_or(|s| s == "available"))
            .and_then(|n| child_text(n, "imageId")))
    }

    fn describe(&mut self, filters: &[(&str, &str)]) -> Result<Vec<Instance>> {
        let mut p = vec![];
        for (i, (k, v)) in filters.iter().enumerate() {
            p.push((format!("Filter.{}.Name", i + 1), k.to_string()));
            p.push((format!("Filter.{}.Value.1", i + 1), v.to_string()));
        }
        instances(&self.query("DescribeInstances", p)?)
    }
}

impl Target for Ec2 {
    fn check(&mut self) -> Result<()> {
        let env = self.env.clone();
        self.describe(&[(&format!("tag:{TAG_ENV}"), &env)])
            .with_context(|| format!("environment {env}: AWS EC2 is not usable"))?;
        Ok(())
    }

    fn put_image(&mut self, img: &Image, parent: Option<&Image>) -> Result<Upload> {
        let image_bytes = std::fs::read(&img.path)
            .with_context(|| format!("cannot read image {}", img.path.display()))?;
        let total = image_bytes.len().div_ceil(blocks::BLOCK) as u64;
        if let Some(ami) = self.image_of(&img.digest)? {
            tracing::info!("AMI {ami} holds {} already: nothing to upload", img.digest);
            self.ami = Some(ami);
            return Ok(Upload {
                reused: true,
                blocks_total: total,
                ..Upload::default()
            });
        }
        let name = format!("{}-{}-{}", img.meta.name, img.meta.version, img.short());
        let tags = [(TAG_DIGEST, img.digest.as_str()), ("Name", name.as_str())];
        let (snapshot, upload) = match self.snapshot_of(&img.digest)? {
            Some(s) => (
                s,
                Upload {
                    reused: true,
                    blocks_total: total,
                    ..Upload::default()
                },
            ),
            None => {
                let parent_snap = match parent {
                    Some(p) => self
                        .snapshot_of(&p.digest)?
                        .map(|s| -> Result<(String, Vec<u8>)> {
                            let b = std::fs::read(&p.path).with_context(|| {
                                format!("cannot read the parent image {}", p.path.display())
                            })?;
                            Ok((s, b))
                        })
                        .transpose()?,
                    None => None,
                };
                let up = ebs::upload(
                    self.c()?,
                    &image_bytes,
                    parent_snap
                        .as_ref()
                        .map(|(s, b)| (s.as_str(), b.as_slice())),
                    &format!("fuse {name} {}", img.digest),
                    &tags,
                )?;
                tracing::info!(
                    "snapshot {}: sent {} of {} blocks ({} zero, {} unchanged)",
                    up.snapshot_id,
                    up.plan.send.len(),
                    up.plan.total,
                    up.plan.skipped_zero,
                    up.plan.skipped_unchanged
                );
                let u = Upload {
                    reused: false,
                    blocks_total: up.plan.total,
                    blocks_sent: up.plan.send.len() as u64,
                    skipped_zero: up.plan.skipped_zero,
                    skipped_unchanged: up.plan.skipped_unchanged,
                    bytes_sent: up.bytes_sent,
                };
                (up.snapshot_id, u)
            }
        };
        let xml = self.query(
            "RegisterImage",
            register_params(
                &name,
                &format!("fuse image {}", img.digest),
                &snapshot,
                img.meta.arch,
            ),
        )?;
        let doc = parse("ec2:RegisterImage", &xml)?;
        let ami = texts(doc.root(), "imageId")
            .into_iter()
            .next()
            .context("ec2:RegisterImage: no imageId in the answer")?;
        let mut p = vec![("ResourceId.1".to_string(), ami.clone())];
        for (i, (k, v)) in tags.iter().enumerate() {
            p.push((format!("Tag.{}.Key", i + 1), k.to_string()));
            p.push((format!("Tag.{}.Value", i + 1), v.to_string()));
        }
        if let Err(e) = self.query("CreateTags", p) {
            // An untagged AMI would never be found again: deregister it.
            let _ = self.query("DeregisterImage", vec![("ImageId".into(), ami.clone())]);
            return Err(e);
        }
        tracing::info!("registered AMI {ami} from snapshot {snapshot}");
        self.ami = Some(ami);
        Ok(upload)
    }

    fn start(&mut self, img: &Image, spec: &ServerSpec) -> Result<Server> {
        let ami = self.ami.clone().context("no AMI: put_image first")?;
        let mut p: Vec<(String, String)> = vec![
            ("ImageId".into(), ami),
            ("InstanceType".into(), self.spec.instance_type.clone()),
            ("MinCount".into(), "1".into()),
            ("MaxCount".into(), "1".into()),
            ("MetadataOptions.HttpTokens".into(), "required".into()),
            ("MetadataOptions.HttpEndpoint".into(), "enabled".into()),
        ];
        if let Some(c) = spec.config {
            p.push((
                "UserData".into(),
                base64::engine::general_purpose::STANDARD.encode(c),
            ));
        }
        if let Some(s) = &self.spec.subnet {
            p.push(("SubnetId".into(), s.clone()));
        }
        for (i, g) in self.spec.security_groups.iter().enumerate() {
            p.push((format!("SecurityGroupId.{}", i + 1), g.clone()));
        }
        let tags = [
            ("Name", spec.name.as_str()),
            (TAG_ENV, spec.env),
            (TAG_DIGEST, img.digest.as_str()),
        ];
        p.extend(tag_spec(1, "instance", &tags));
        let xml = self
            .query("RunInstances", p)
            .with_context(|| format!("cannot start server {}", spec.name))?;
        let started = instances(&xml)?;
        let i = started
            .first()
            .context("ec2:RunInstances: no instance in the answer")?;
        tracing::info!("started {} as {}", spec.name, i.id);
        Ok(Server {
            name: spec.name.clone(),
            id: i.id.clone(),
            digest: img.digest.clone(),
            address: i.private_ip.clone(),
        })
    }

    fn console(&mut self, s: &Server) -> Result<String> {
        let xml = self.query(
            "GetConsoleOutput",
            vec![
                ("InstanceId".into(), s.id.clone()),
                ("Latest".into(), "true".into()),
            ],
        )?;
        let doc = parse("ec2:GetConsoleOutput", &xml)?;
        let out = texts(doc.root(), "output")
            .into_iter()
            .next()
            .unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out.replace(['\n', '\r'], ""))
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn address(&mut self, s: &Server) -> Result<Option<String>> {
        if s.address.is_some() {
            return Ok(s.address.clone());
        }
        let found = self.describe(&[("instance-id", &s.id)])?;
        Ok(found.into_iter().find_map(|i| i.private_ip))
    }

    fn stop(&mut self, s: &Server) -> Result<()> {
        match self.query(
            "TerminateInstances",
            vec![("InstanceId.1".into(), s.id.clone())],
        ) {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("InvalidInstanceID.NotFound") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn servers(&mut self, env: &str) -> Result<Vec<Server>> {
        let found = self.describe(&[(&format!("tag:{TAG_ENV}"), env)])?;
        Ok(found
            .into_iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running"))
            .map(|i| Server {
                name: i.tag("Name").unwrap_or(&i.id).to_string(),
                digest: i.tag(TAG_DIGEST).unwrap_or("").to_string(),
                address: i.private_ip.clone(),
                id: i.id,
            })
            .collect())
    }

    fn health_by_switch(&self) -> bool {
        true
    }
}

/// An ELBv2 target group as the environment's switch.
pub struct TargetGroup {
    env: String,
    region: Option<String>,
    arn: String,
    client: Option<Client>,
}

impl TargetGroup {
    pub fn new(env: &str, spec: &AwsSpec) -> TargetGroup {
        TargetGroup {
            env: env.to_string(),
            region: spec.region.clone(),
            arn: spec.target_group.clone(),
            client: None,
        }
    }

    fn client(&mut self) -> Result<&Client> {
        if self.client.is_none() {
            self.client = Some(
                Client::new(self.region.as_deref())
                    .with_context(|| format!("environment {}: AWS credentials", self.env))?,
            );
        }
        self.client.as_ref().context("no AWS client")
    }

    /// A call about the target group (its ARN first among the parameters).
    fn query(&mut self, action: &str, mut params: Vec<(String, String)>) -> Result<String> {
        params.insert(0, ("TargetGroupArn".into(), self.arn.clone()));
        self.client()?
            .query("elasticloadbalancing", action, &params)
    }

    /// The state of `id` in the target group (healthy, initial, draining, unused...).
    fn state(&mut self, id: &str) -> Result<String> {
        let xml = self.query(
            "DescribeTargetHealth",
            vec![("Targets.member.1.Id".into(), id.into())],
        )?;
        let doc = parse("elasticloadbalancing:DescribeTargetHealth", &xml)?;
        Ok(doc
            .descendants()
            .filter(|n| n.has_tag_name("member"))
            .find(|m| {
                child(*m, "Target")
                    .and_then(|t| child_text(t, "Id"))
                    .as_deref()
                    == Some(id)
            })
            .and_then(|m| child(m, "TargetHealth"))
            .and_then(|h| child_text(h, "State"))
            .unwrap_or_else(|| "unused".into()))
    }
}

impl Switch for TargetGroup {
    fn check(&mut self) -> Result<()> {
        let arn = self.arn.clone();
        let env = self.env.clone();
        let r = self.client()?.query(
            "elasticloadbalancing",
            "DescribeTargetGroups",
            &[("TargetGroupArns.member.1".into(), arn.clone())],
        );
        let xml = r.with_context(|| format!("environment {env}: target group {arn}"))?;
        let doc = parse("elasticloadbalancing:DescribeTargetGroups", &xml)?;
        if !texts(doc.root(), "TargetGroupArn").contains(&arn) {
            bail!("environment {env}: no target group {arn}");
        }
        Ok(())
    }

    fn add(&mut self, s: &Server) -> Result<()> {
        self.query(
            "RegisterTargets",
            vec![("Targets.member.1.Id".into(), s.id.clone())],
        )
        .with_context(|| format!("cannot register {} in {}", s.name, self.arn))?;
        Ok(())
    }

    fn healthy(&mut self, s: &Server) -> Result<bool> {
        Ok(self.state(&s.id)? == "healthy")
    }

    /// Deregistration is the target group's drain: it stops new requests and lets open
    /// ones finish for the group's deregistration delay.
    fn drain(&mut self, s: &Server) -> Result<()> {
        self.query(
            "DeregisterTargets",
            vec![("Targets.member.1.Id".into(), s.id.clone())],
        )
        .with_context(|| format!("cannot deregister {} from {}", s.name, self.arn))?;
        Ok(())
    }

    fn sessions(&mut self, s: &Server) -> Result<u64> {
        Ok(u64::from(self.state(&s.id)? == "draining"))
    }

    fn remove(&mut self, s: &Server) -> Result<()> {
        match self.state(&s.id)?.as_str() {
            "unused" => Ok(()),
            _ => self.drain(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_instances_with_their_tags_and_state() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
 <reservationSet><item><reservationId>r-1</reservationId><instancesSet>
  <item><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState>
   <privateIpAddress>10.0.0.5</privateIpAddress>
   <tagSet><item><key>fuse:env</key><value>prod</value></item><item><key>Name</key><value>a &amp; b</value></item></tagSet></item>
  <item><instanceId>i-2</instanceId><instanceState><code>48</code><name>terminated</name></instanceState></item>
 </instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let v = instances(xml).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].id, "i-1");
        assert_eq!(v[0].state, "running");
        assert_eq!(v[0].private_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(v[0].tag("Name"), Some("a & b"));
        assert_eq!(v[1].state, "terminated");
        assert!(v[1].tags.is_empty());
        assert!(instances("<not xml").is_err());
    }

    #[test]
    fn the_ami_boots_uefi_with_ena_and_imdsv2() {
        let p = register_params("hello-1.0.0-abc", "d", "snap-1", crate::arch::Arch::Amd64);
        let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BootMode"), Some("uefi"));
        assert_eq!(get("Architecture"), Some("x86_64"));
        let arm = register_params("h", "d", "snap-1", crate::arch::Arch::Arm64);
        assert!(arm.contains(&("Architecture".into(), "arm64".into())));
        assert_eq!(get("EnaSupport"), Some("true"));
        assert_eq!(get("ImdsSupport"), Some("v2.0"));
        assert_eq!(get("BlockDeviceMapping.1.Ebs.SnapshotId"), Some("snap-1"));
        assert_eq!(
            get("RootDeviceName"),
            get("BlockDeviceMapping.1.DeviceName")
        );
    }
}
