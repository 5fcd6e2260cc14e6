-- WebRTC signaling of the live view (PostgreSQL), kept with its sign-in session so that an
-- offer posted before the browser VM exists is honoured once the VM is ready.
-- webrtc_offer: the viewer's SDP offer; webrtc_answer: the guest streamer's SDP
-- answer with its candidate rewritten to the controller's media relay;
-- webrtc_candidates: the answer's candidates as a JSON array of
-- {candidate, sdpMid, sdpMLineIndex}. A new offer clears the answer.
-- Keep in step with ../sqlite/0002_webrtc_signaling.sql.

ALTER TABLE auth_sessions ADD COLUMN webrtc_offer TEXT;
ALTER TABLE auth_sessions ADD COLUMN webrtc_answer TEXT;
ALTER TABLE auth_sessions ADD COLUMN webrtc_candidates TEXT;
