"""Pure statistics on tensors: nothing here knows about ``nn.Module``."""
