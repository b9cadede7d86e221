//! Our HCL schemas: one description yields the hclspec sent to Nomad and the tolerant decoder.
