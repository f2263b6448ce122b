//! The libvirt target: servers are libvirt domains (q35, OVMF, a virtio disk on the image's
//! storage volume, user-mode networking with the app port forwarded, the environment's
//! config through fw_cfg, the serial console in a file), driven through `virsh`.

use super::{Image, Server, ServerSpec, Target, Upload};
use crate::envs::LibvirtSpec;
use anyhow::{bail, Result};

pub struct Libvirt {
    spec: LibvirtSpec,
}

impl Libvirt {
    pub fn new(spec: &LibvirtSpec) -> Libvirt {
        Libvirt { spec: spec.clone() }
    }
}

impl Target for Libvirt {
    fn check(&mut self) -> Result<()> {
        bail!("libvirt {:?}: not implemented yet", self.spec.uri)
    }
    fn put_image(&mut self, _img: &Image, _parent: Option<&Image>) -> Result<Upload> {
        bail!("not implemented yet")
    }
    fn start(&mut self, _img: &Image, _spec: &ServerSpec) -> Result<Server> {
        bail!("not implemented yet")
    }
    fn console(&mut self, _s: &Server) -> Result<String> {
        Ok(String::new())
    }
    fn address(&mut self, s: &Server) -> Result<Option<String>> {
        Ok(s.address.clone())
    }
    fn stop(&mut self, _s: &Server) -> Result<()> {
        Ok(())
    }
    fn servers(&mut self, _env: &str) -> Result<Vec<Server>> {
        Ok(vec![])
    }
}
