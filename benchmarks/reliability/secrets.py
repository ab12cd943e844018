def scan(ctx): raise NotImplementedError
