def o365_bad_input(ctx): raise NotImplementedError
def eventhub_bad_input(ctx): raise NotImplementedError
def eventhub_fuzz(ctx): raise NotImplementedError
