#!/usr/bin/env sh
# Example calls with curl. Usage: PASSWORD=... KEY=... sh examples/curl.sh
BASE=${BASE:-http://localhost:3000}
AUTH="admin:${PASSWORD:?set PASSWORD}"
H='content-type: application/json'
curl -s -u "$AUTH" -H "$H" -d '{"query": {"video": {"video_id": "example"}}, "interval": "1 day", "timeframe": "30 days"}' "$BASE/api/v1/plays"; echo
curl -s -u "$AUTH" -H "$H" -d '{"query": {"video": {"video_id": "example"}}, "timeframe": "30 days", "ranges": 20}' "$BASE/api/v1/engagement"; echo
curl -s -u "$AUTH" -H "$H" -d '{"query": {"video": {"video_id": "example"}}, "interval": "1 day"}' "$BASE/api/v1/sources"; echo
curl -s -u "$AUTH" -H "$H" -d '{"query": {"video": {"video_id": "example"}}, "interval": "1 day", "timeframe": "7 days", "breakdown": "device"}' "$BASE/api/v1/qoe"; echo
curl -s -u "$AUTH" -G --data-urlencode 'query={"key": "'"${KEY:?set KEY}"'"}' "$BASE/api/v1/watching"; echo
curl -s -u "$AUTH" -X POST "$BASE/api/v1/keys"; echo
curl -s -u "$AUTH" "$BASE/api/v1/keys"; echo
