"""Built-in environment families of agentgym; each subpackage registers through an entry point."""
