from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from dmclient import protocol
from decentcom.errors import DEVICE_SESSION, JSON_BODY, ApiError, error_responses
from decentcom.fields import B58KeyField
from devices import services as device_services
from devices.apis import OneTimePrekeySerializer, SignedPrekeyWireField, b58_path, is_key_id, server_origin
from dms import selectors, services
from dms.selectors import conversation_participants_map
from dms.serializers import (AckInput, AckOutput, ConversationOutput, DeliveryStatusOutput, MessagePageOutput,
                             RetentionSerializer, SendInput, SendOutput, ServerDescriptionOutput, StatusInput,
                             StatusOutput, SyncInput, ack_input_validate, send_input_validate)
from dms.wire import conversation_wire


CONVERSATION_ID = OpenApiParameter("conversation_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                   description="lower-case UUID")


def _conversation_or_404(request, conversation_id: str):
    if not protocol.is_uuid(conversation_id):
        raise ApiError(404, "not_found", "no such conversation")
    conversation = selectors.conversation_get_for_user(conversation_id=conversation_id, user=request.user)
    if conversation is None:
        raise ApiError(404, "not_found", "no such conversation")
    return conversation


def _wire(conversation) -> dict:
    participants = conversation_participants_map(conversation_ids=[conversation.id])[conversation.id]
    return conversation_wire(conversation, participants)


class ServerDescriptionApi(APIView):
    """§4: the server's description for clients; no authentication."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="server_description", responses={200: ServerDescriptionOutput})
    def get(self, request):
        return Response(selectors.server_description(
            origin=server_origin(request), conf=selectors.server_settings_for_request(request)))


class ConversationsApi(APIView):
    """GET: my conversations, latest activity first. POST: a direct conversation or a group."""

    @extend_schema_serializer(component_name="ConversationCreateInput")
    class InputSerializer(serializers.Serializer):
        participants = serializers.ListField(child=B58KeyField(), min_length=1, max_length=1000)
        retention = RetentionSerializer(required=False)

    class QuerySerializer(serializers.Serializer):
        after = serializers.CharField(required=False, allow_blank=True, max_length=200)
        limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=100)

    @extend_schema(operation_id="dms_conversations_list", parameters=[QuerySerializer], responses={
        200: inline_serializer("ConversationList", {
            "conversations": ConversationOutput(many=True), "has_more": serializers.BooleanField(),
            "cursor": serializers.CharField()}),
        **error_responses(*DEVICE_SESSION, 400)})
    def get(self, request):
        # A plain dict: DRF reads a blank form value as "not given", so `?limit=` would pass.
        query = self.QuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(selectors.conversation_list_for_user(
            user=request.user, limit=query.validated_data["limit"], after=query.validated_data.get("after")))

    @extend_schema(request=InputSerializer, responses={
        201: ConversationOutput, 200: ConversationOutput,
        **error_responses(*DEVICE_SESSION, *JSON_BODY, 409, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation, created = services.conversation_create(
            user=request.user, participant_ids=data.validated_data["participants"],
            retention=data.validated_data.get("retention"))
        return Response(_wire(conversation), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ConversationDetailApi(APIView):
    @extend_schema_serializer(component_name="ConversationPatchInput")
    class PatchSerializer(serializers.Serializer):
        retention = RetentionSerializer()

    @extend_schema(parameters=[CONVERSATION_ID],
                   responses={200: ConversationOutput, **error_responses(*DEVICE_SESSION, 404)})
    def get(self, request, conversation_id: str):
        return Response(_wire(_conversation_or_404(request, conversation_id)))

    @extend_schema(parameters=[CONVERSATION_ID], request=PatchSerializer, responses={
        200: ConversationOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY, 404)})
    def patch(self, request, conversation_id: str):
        conversation = _conversation_or_404(request, conversation_id)
        data = self.PatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_set_retention(
            conversation=conversation, actor=request.user, retention=data.validated_data["retention"])
        return Response(_wire(conversation))


class ConversationParticipantsAddApi(APIView):
    @extend_schema_serializer(component_name="ParticipantsAddInput")
    class InputSerializer(serializers.Serializer):
        add = serializers.ListField(child=B58KeyField(), min_length=1, max_length=1000)

    @extend_schema(parameters=[CONVERSATION_ID], request=InputSerializer, responses={
        200: ConversationOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY, 404, 409)})
    def post(self, request, conversation_id: str):
        conversation = _conversation_or_404(request, conversation_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_add_participants(
            conversation=conversation, actor=request.user, user_ids=data.validated_data["add"])
        return Response(_wire(conversation))


class ConversationParticipantRemoveApi(APIView):
    @extend_schema(parameters=[CONVERSATION_ID, b58_path("user_id", "the participant's user id")],
                   responses={204: None, **error_responses(*DEVICE_SESSION, 404, 409)})
    def delete(self, request, conversation_id: str, user_id: str):
        conversation = _conversation_or_404(request, conversation_id)
        if not is_key_id(user_id):
            raise ApiError(404, "not_found", "not a participant")
        services.conversation_remove_participant(conversation=conversation, actor=request.user, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationMessagesApi(APIView):
    class QuerySerializer(serializers.Serializer):
        before = serializers.CharField(required=False, allow_blank=True, max_length=200)
        limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=100)

    @extend_schema(parameters=[CONVERSATION_ID, QuerySerializer], responses={
        200: MessagePageOutput, **error_responses(*DEVICE_SESSION, 400, 404)})
    def get(self, request, conversation_id: str):
        conversation = _conversation_or_404(request, conversation_id)
        # A plain dict: DRF reads a blank form value as "not given", so `?limit=` would pass.
        query = self.QuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(selectors.dm_list_history(
            conversation=conversation, device=request.auth.device,
            limit=query.validated_data["limit"], before=query.validated_data.get("before")))


class DmSendApi(APIView):
    @extend_schema(request=SendInput, responses={
        201: SendOutput, 200: SendOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY, 404, 409, 429)})
    def post(self, request):
        device = request.auth.device
        conf = selectors.server_settings_for_request(request)
        services.dm_send_rate_check(device=device, conf=conf)
        v = send_input_validate(request.data)
        created, body = services.dm_send(device=device, conf=conf, request=services.SendRequest(
            message_id=v["message_id"], conversation_id=v["conversation_id"], epoch=v["epoch"],
            key_id=protocol.b64e(v["key_id"]), participants_sha256=protocol.b64e(v["participants_sha256"]),
            retention=v["retention"], nonce=v["nonce"], ciphertext=v["ciphertext"], signature=v["signature"],
            recipients=[services.Recipient(device_id=r["device_id"], wrap=r["key_wrap"]) for r in v["recipients"]]))
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DmSyncApi(APIView):
    @extend_schema(request=SyncInput, responses={
        200: MessagePageOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY)})
    def post(self, request):
        data = SyncInput(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(selectors.dm_list_pending_for_device(
            device=request.auth.device, limit=data.validated_data["limit"], after=data.validated_data.get("after"),
            conf=selectors.server_settings_for_request(request)))


class PrekeysClaimApi(APIView):
    """§6b: the signed prekey and one one-time prekey (handed out once, deleted
    as it is) of each active device named; others are left out."""

    @extend_schema_serializer(component_name="PrekeysClaimInput")
    class InputSerializer(serializers.Serializer):
        devices = serializers.ListField(child=B58KeyField(), help_text="at most the recipient limit; no duplicates")

        def validate_devices(self, value):
            if len(value) != len(set(value)):
                raise serializers.ValidationError("a device appears twice")
            return value

    class ClaimedSerializer(serializers.Serializer):
        device_id = serializers.CharField()
        signed_prekey = SignedPrekeyWireField(allow_null=True)
        one_time = OneTimePrekeySerializer(allow_null=True)

    @extend_schema(operation_id="dms_prekeys_claim", request=InputSerializer, responses={
        200: inline_serializer("PrekeysClaimOutput", {"prekeys": ClaimedSerializer(many=True)}),
        **error_responses(*DEVICE_SESSION, *JSON_BODY, 429)})
    def post(self, request):
        conf = selectors.server_settings_for_request(request)
        device_services.prekeys_claim_rate_check(device=request.auth.device, conf=conf)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device_ids = data.validated_data["devices"]
        if len(device_ids) > conf.max_recipients_per_message:
            raise ApiError(400, "too_many_recipients", f"at most {conf.max_recipients_per_message} devices",
                           max_recipients=conf.max_recipients_per_message)
        return Response({"prekeys": device_services.prekeys_claim(device_ids=device_ids)})


class DmAckApi(APIView):
    @extend_schema(request=AckInput, responses={200: AckOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY)})
    def post(self, request):
        data = ack_input_validate(request.data)
        device = request.auth.device
        if data.get("device_id", device.device_id) != device.device_id:
            raise ApiError(403, "forbidden", "you can only ACK for your own device")
        return Response(services.dm_ack(device=device, message_ids=data["message_ids"], failed=data["failed"]))




STATUS_WHO = ("Only a device session of the message's sender's user (any of its devices) is answered; "
              "for everyone else, recipients included, the message is unknown. It answers as long as the "
              "server remembers the message_id: until 7 days after the message is gone. A state says what a "
              "device did (fetched and ACKed the message), not that a person read it.")


class DmMessageStatusApi(APIView):
    @extend_schema(
        operation_id="dms_message_status", description="Delivery status of one message (§7a). " + STATUS_WHO,
        parameters=[OpenApiParameter("message_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                     description="lower-case UUID")],
        responses={200: DeliveryStatusOutput, **error_responses(*DEVICE_SESSION, 404)})
    def get(self, request, message_id: str):
        statuses = (selectors.delivery_status_for_user(user=request.user, message_ids=[message_id])
                    if protocol.is_uuid(message_id) else {})
        if message_id not in statuses:
            raise ApiError(404, "not_found", "no such message")
        return Response(statuses[message_id])


class DmStatusApi(APIView):
    @extend_schema(
        operation_id="dms_status", description="Delivery status of up to 500 messages at once (§7a). " + STATUS_WHO,
        request=StatusInput, responses={200: StatusOutput, **error_responses(*DEVICE_SESSION, *JSON_BODY)})
    def post(self, request):
        data = StatusInput(data=request.data)
        data.is_valid(raise_exception=True)
        requested = sorted(set(data.validated_data["message_ids"]))
        statuses = selectors.delivery_status_for_user(user=request.user, message_ids=requested)
        return Response({"statuses": [statuses[m] for m in requested if m in statuses],
                         "unknown": [m for m in requested if m not in statuses]})
