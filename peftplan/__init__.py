"""peftplan."""
