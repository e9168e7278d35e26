"""Provider clients: Apiframe (webhooks) and Runbase (polling only)."""
