def rebalancing(ctx): raise NotImplementedError
