def o365_bad_config(ctx): raise NotImplementedError
def eventhub_bad_config(ctx): raise NotImplementedError
