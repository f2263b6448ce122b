//! The AWS target of `fuse deploy`: the image goes into an EBS snapshot through the EBS
//! direct APIs (only the 512 KiB blocks the parent snapshot lacks), an AMI is registered
//! from it, servers are EC2 instances, the switch is an ELBv2 target group. Requests are
//! signed with SigV4 over the existing HTTP client (see docs/deploy.md, AWS, for why not
//! the SDK).

pub mod blocks;
pub mod client;
pub mod ebs;
pub mod ec2;
pub mod sigv4;

use serde::{Deserialize, Serialize};

/// `[env.NAME.aws]` of fuse-envs.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSpec {
    /// Region, e.g. "eu-west-1" (else AWS_REGION / AWS_DEFAULT_REGION).
    #[serde(default)]
    pub region: Option<String>,
    /// EC2 instance type (a Nitro type: NVMe disk, ENA NIC), e.g. "t3.small".
    pub instance_type: String,
    /// Subnet to start instances in (else the default VPC's).
    #[serde(default)]
    pub subnet: Option<String>,
    /// Security groups of the instances (else the VPC's default group).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The ELBv2 target group (ALB or NLB) that is the environment's traffic switch.
    pub target_group: String,
}

impl AwsSpec {
    /// The `[env.NAME.aws]` table (kept as TOML by the environment model), read strictly.
    pub fn from_table(env: &str, t: &toml::Table) -> anyhow::Result<AwsSpec> {
        use anyhow::Context;
        t.clone()
            .try_into()
            .with_context(|| format!("environment {env}: [env.{env}.aws]"))
    }
}

/// The tag keys fuse puts on what it makes, so a rerun finds and reuses it.
pub const TAG_DIGEST: &str = "fuse:digest";
pub const TAG_ENV: &str = "fuse:env";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reads_the_issue_example_and_refuses_unknown_keys() {
        let s: AwsSpec = toml::from_str(
            "region = \"eu-west-1\"\ninstance_type = \"t3.small\"\nsubnet = \"subnet-1\"\n\
             target_group = \"arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/x/y\"\n",
        )
        .unwrap();
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert!(s.security_groups.is_empty());
        let t: toml::Table =
            toml::from_str("instance_type = \"t3.small\"\ntarget_group = \"x\"\n").unwrap();
        assert_eq!(
            AwsSpec::from_table("prod", &t).unwrap().instance_type,
            "t3.small"
        );
        assert!(toml::from_str::<AwsSpec>(
            "instance_type = \"t3.small\"\ntarget_group = \"x\"\nkey_name = \"k\"\n"
        )
        .is_err());
    }
}
