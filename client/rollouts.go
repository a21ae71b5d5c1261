package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
)

// Change is the answer of a rollout change. A change that widens how
// much of the fleet a release reaches may wait for a second person (the
// API answers 202): then Pending is the approval it waits for and
// nothing changed yet, Rollout is nil. Otherwise Rollout is the rollout
// after the change. Waiting is a success, not an error: the request was
// taken.
type Change struct {
	Rollout *wire.Rollout
	Pending *wire.Approval
}

// change sends a rollout change to path and reads either answer.
func (c *Client) change(ctx context.Context, path string, in any) (*Change, error) {
	var raw json.RawMessage
	status, err := c.doJSON(ctx, http.MethodPost, wire.AdminPrefix+path, in, &raw)
	if err != nil {
		return nil, err
	}
	if status == http.StatusAccepted {
		var a wire.Approval
		if err := json.Unmarshal(raw, &a); err != nil || a.ID == "" {
			return nil, &BadAnswerError{http.MethodPost, wire.AdminPrefix + path, fmt.Errorf("a 202 without the approval it waits for: %w", err)}
		}
		return &Change{Pending: &a}, nil
	}
	var r wire.Rollout
	if err := json.Unmarshal(raw, &r); err != nil || r.ID == "" {
		return nil, &BadAnswerError{http.MethodPost, wire.AdminPrefix + path, fmt.Errorf("not a rollout: %w", err)}
	}
	return &Change{Rollout: &r}, nil
}

func rolloutPath(id, rest string) string { return "/rollouts/" + url.PathEscape(id) + rest }

// CreateRollout creates a rollout of a published release, started at
// once unless req.Draft. A start wider than the four-eyes limit waits
// for approval (Change.Pending).
func (c *Client) CreateRollout(ctx context.Context, req wire.RolloutRequest) (*Change, error) {
	return c.change(ctx, "/rollouts", req)
}

// Rollouts lists the rollouts in states (all when none), oldest first.
func (c *Client) Rollouts(ctx context.Context, states ...rollout.RolloutState) ([]wire.Rollout, error) {
	q := url.Values{}
	for _, s := range states {
		q.Add("state", string(s))
	}
	return list[wire.Rollout](ctx, c, "/rollouts"+query(q))
}

// Rollout returns rollout id.
func (c *Client) Rollout(ctx context.Context, id string) (*wire.Rollout, error) {
	return call[wire.Rollout](ctx, c, http.MethodGet, rolloutPath(id, ""), nil)
}

// RolloutEvents returns rollout id's last limit events (0: the server's
// default), oldest first.
func (c *Client) RolloutEvents(ctx context.Context, id string, limit int) ([]wire.RolloutEvent, error) {
	q := url.Values{}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return list[wire.RolloutEvent](ctx, c, rolloutPath(id, "/events")+query(q))
}

// RolloutAction takes an action that needs only a reason: one of
// rollout.ActionStart, ActionPause, ActionResume, ActionAbort,
// ActionComplete. Start and resume may wait for approval.
func (c *Client) RolloutAction(ctx context.Context, id, action, reason string) (*Change, error) {
	return c.change(ctx, rolloutPath(id, "/"+url.PathEscape(action)), wire.RolloutActionRequest{Reason: reason})
}

// StartRollout starts draft rollout id; it may wait for approval.
func (c *Client) StartRollout(ctx context.Context, id, reason string) (*Change, error) {
	return c.RolloutAction(ctx, id, rollout.ActionStart, reason)
}

// PauseRollout stops new offers of rollout id.
func (c *Client) PauseRollout(ctx context.Context, id, reason string) (*wire.Rollout, error) {
	return narrow(c.RolloutAction(ctx, id, rollout.ActionPause, reason))
}

// ResumeRollout resumes paused or halted rollout id; it may wait for
// approval.
func (c *Client) ResumeRollout(ctx context.Context, id, reason string) (*Change, error) {
	return c.RolloutAction(ctx, id, rollout.ActionResume, reason)
}

// AbortRollout ends rollout id for good.
func (c *Client) AbortRollout(ctx context.Context, id, reason string) (*wire.Rollout, error) {
	return narrow(c.RolloutAction(ctx, id, rollout.ActionAbort, reason))
}

// CompleteRollout ends rollout id as done.
func (c *Client) CompleteRollout(ctx context.Context, id, reason string) (*wire.Rollout, error) {
	return narrow(c.RolloutAction(ctx, id, rollout.ActionComplete, reason))
}

// narrow is the rollout of a change that never waits for approval.
func narrow(ch *Change, err error) (*wire.Rollout, error) {
	if err != nil {
		return nil, err
	}
	if ch.Rollout == nil {
		return nil, fmt.Errorf("rollout %s: a change that narrows waits for approval %s", ch.Pending.RolloutID, ch.Pending.ID)
	}
	return ch.Rollout, nil
}

// AdvanceRollout widens rollout id to its next stage, or to percent
// when not 0. It may wait for approval.
func (c *Client) AdvanceRollout(ctx context.Context, id, reason string, percent float64) (*Change, error) {
	return c.change(ctx, rolloutPath(id, "/advance"), wire.RolloutAdvanceRequest{Reason: reason, Percent: percent})
}

// HoldModel stops new offers of rollout id to model while the other
// models go on.
func (c *Client) HoldModel(ctx context.Context, id, model, reason string) (*wire.Rollout, error) {
	return narrow(c.change(ctx, rolloutPath(id, "/holds"), wire.RolloutHoldRequest{Model: model, Reason: reason}))
}

// ReleaseHold offers rollout id to held model again.
func (c *Client) ReleaseHold(ctx context.Context, id, model, reason string) (*wire.Rollout, error) {
	return narrow(c.change(ctx, rolloutPath(id, "/holds/"+url.PathEscape(model)+"/release"), wire.RolloutActionRequest{Reason: reason}))
}

// Approvals lists rollout id's four-eyes approvals, newest first.
func (c *Client) Approvals(ctx context.Context, id string) ([]wire.Approval, error) {
	return list[wire.Approval](ctx, c, rolloutPath(id, "/approvals"))
}

// Approve approves a widening another person asked for; the decision
// carries the rollout after it.
func (c *Client) Approve(ctx context.Context, rolloutID, approvalID, reason string) (*wire.ApprovalDecision, error) {
	return call[wire.ApprovalDecision](ctx, c, http.MethodPost,
		rolloutPath(rolloutID, "/approvals/"+url.PathEscape(approvalID)+"/approve"), wire.RolloutActionRequest{Reason: reason})
}

// Reject refuses a widening; the rollout stays as it is.
func (c *Client) Reject(ctx context.Context, rolloutID, approvalID, reason string) (*wire.ApprovalDecision, error) {
	return call[wire.ApprovalDecision](ctx, c, http.MethodPost,
		rolloutPath(rolloutID, "/approvals/"+url.PathEscape(approvalID)+"/reject"), wire.RolloutActionRequest{Reason: reason})
}

// RolloutReport is rollout id's report: counts by state, model and
// starting build, failure codes, installs per hour.
func (c *Client) RolloutReport(ctx context.Context, id string) (*server.RolloutReport, error) {
	return call[server.RolloutReport](ctx, c, http.MethodGet, rolloutPath(id, "/report"), nil)
}

// ExposureReport is the fleet's exposure (handsets still auto-enabled or
// unencrypted) over opts.Days days up to opts.Day.
func (c *Client) ExposureReport(ctx context.Context, opts server.ExposureOptions) (*server.ExposureReport, error) {
	q := url.Values{}
	if opts.Day != "" {
		q.Set("day", opts.Day)
	}
	if opts.Days != 0 {
		q.Set("days", strconv.Itoa(opts.Days))
	}
	if opts.Top != 0 {
		q.Set("top", strconv.Itoa(opts.Top))
	}
	return call[server.ExposureReport](ctx, c, http.MethodGet, "/reports/exposure"+query(q), nil)
}
