"""Layer Separation Network: split a joint crop into soft-tissue, upper- and lower-bone layers."""
