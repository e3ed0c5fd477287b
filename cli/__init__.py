"""`ferry`, the operator's command: talks only to the coordinator API over NATS; never imports the coordinator or libvirt."""
