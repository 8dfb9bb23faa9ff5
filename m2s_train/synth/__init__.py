"""Stage A: stereo pairs with exact disparity synthesised from single images (MfS + EA inpainting)."""
