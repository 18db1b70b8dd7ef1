"""The update engine: verifying releases and installing them into the inactive slot."""
