"""The oneDNN convolution kernel for CPU inference (a MindSpore custom op, C++ compiled on first use)."""
