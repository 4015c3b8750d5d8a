"""Push notifications to mobile apps whose socket is gone: devices (APNs and FCM tokens,
tied to the session that registered them), delivery through APNs and FCM HTTP v1 from arq
jobs, and the push log. See docs/push.md."""
