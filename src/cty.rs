//! cty-msgpack: decoding what the Nomad client sends, encoding as it does.
