"""The Smaug paper's preference pair datasets (MetaMath, ARC-Challenge, HellaSwag): builders, readers, statistics."""
