"""What agent, coordinator and CLI share at run time: NATS connection, service error boundary, logging, config loading."""
