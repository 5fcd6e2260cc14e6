# polydev: route "open this URL" to the guest agent.
export BROWSER=/usr/local/bin/polydev-open-url
