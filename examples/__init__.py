"""Working examples for README.md's "Extending it"; tests/test_extending.py runs them."""
