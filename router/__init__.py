"""The router: meshserve's single front door (management API + inference)."""
