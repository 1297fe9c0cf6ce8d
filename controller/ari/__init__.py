"""The controller's ARI client: typed models and events, REST calls, the reconnecting events WebSocket.

Only the controller talks ARI. `rest.AriRest` wraps the REST calls the call logic needs,
`events.EventStream` delivers typed events in order per channel, `capabilities.probe` reads what this
Asterisk can do (AudioSocket formats, WebSocket media).
"""
