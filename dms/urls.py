from django.urls import path

from dms import apis

urlpatterns = [
    path("conversations", apis.ConversationsApi.as_view(), name="dm-conversations"),
    path("conversations/<str:conversation_id>", apis.ConversationDetailApi.as_view(), name="dm-conversation"),
    path("conversations/<str:conversation_id>/participants", apis.ConversationParticipantsAddApi.as_view(),
         name="dm-participants-add"),
    path("conversations/<str:conversation_id>/participants/<str:user_id>",
         apis.ConversationParticipantRemoveApi.as_view(), name="dm-participant-remove"),
    path("conversations/<str:conversation_id>/messages", apis.ConversationMessagesApi.as_view(),
         name="dm-history"),
    path("send", apis.DmSendApi.as_view(), name="dm-send"),
    path("sync", apis.DmSyncApi.as_view(), name="dm-sync"),
    path("ack", apis.DmAckApi.as_view(), name="dm-ack"),
    path("prekeys/claim", apis.PrekeysClaimApi.as_view(), name="dm-prekeys-claim"),
    path("messages/<str:message_id>/status", apis.DmMessageStatusApi.as_view(), name="dm-message-status"),
    path("status", apis.DmStatusApi.as_view(), name="dm-status"),
]
