//! Deploy targets. (Placeholder until the deploy flow of branch `deploy` lands: it holds
//! only the AWS target's parts; on merge, keep `deploy`'s file and add `pub mod aws;`.)

pub mod aws;
