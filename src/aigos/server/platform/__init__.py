"""The platform itself: health, build information and the platform-admin token."""
