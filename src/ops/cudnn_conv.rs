//! Placeholder until the cuDNN convolution op lands.
pub fn enable_cudnn_conv(on: bool) -> Result<(), String> {
    if on {
        return Err("--cudnn-conv on needs a build with --features cudnn".into());
    }
    Ok(())
}

/// Whether dense convolutions go through the cuDNN op.
pub fn cudnn_conv_enabled() -> bool {
    false
}
