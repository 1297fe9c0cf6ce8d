"""The controller: the only process that talks to Asterisk (ARI); it admits calls and hands them to workers."""
