"""The CPU showcases: a tiny random model for tests and twins, the demo's real small model, `make demo` and
`make reproduce`."""
